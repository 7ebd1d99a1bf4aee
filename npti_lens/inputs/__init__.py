"""What the method reads: question and persona files, inventory items and their key, chat prompts, and the data and protocols shipped in `data/` and `protocols/`."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
PROTOCOL_DIR = Path(__file__).parent / "protocols"
