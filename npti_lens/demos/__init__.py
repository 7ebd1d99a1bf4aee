"""The demos as lists of stages over one state: the organism's and the real model's (the paper's protocol), the dose-response, and their shared tables and files."""
