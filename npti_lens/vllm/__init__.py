"""The vLLM engine, one room beside the TransformerLens loop: NPTI at scale and behind a server.

- `engine`: `VLLMEngine`, the driver half (answers, inductions, statistics for the workflow layer);
- `worker`: the worker extension, NPTI's edit and the statistics inside vLLM's workers;
- `args`: the `npti_*` request arguments and a layer's plan split over tensor-parallel ranks;
- `check`: what vLLM must not be asked for (configurations under which the hooks would not run or
  would be wrong), and the server's per-request check;
- `serve`: `npti serve`, vLLM's own OpenAI-compatible server with the extension.

vLLM itself is imported only when an engine or a server is made.
"""
