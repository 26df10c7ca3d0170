#!/usr/bin/env python
"""Convert Kandinsky Video 1.1 checkpoints to safetensors (see kv_core/convert.py).

    python tools/kv_convert.py release  SRC_DIR OUT_DIR [--dtype bf16] [--t5 FLAN_UL2_DIR]
    python tools/kv_convert.py network  SRC OUT.safetensors [--dtype fp8] [--configs configs.json]
    python tools/kv_convert.py t5       FLAN_UL2_DIR OUT.safetensors [--dtype bf16]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kv_core.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
