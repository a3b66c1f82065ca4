"""Jobs that only sleep and record when they ran (tests of how many jobs run at once)."""
import json
import os
import time
from pathlib import Path


def sleep_and_record(folder: str, name: str, seconds: float) -> str:
    """Sleep ``seconds``; write [start, end, CUDA_VISIBLE_DEVICES] to ``folder/name``."""
    start = time.time()
    time.sleep(seconds)
    Path(folder, name).write_text(json.dumps([start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")]))
    return name
