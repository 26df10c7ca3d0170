#!/usr/bin/env python
"""Convert Kandinsky Video 1.1 checkpoints to safetensors (see kv_core/convert.py).

    python -m tools.kv_convert release  SRC_DIR OUT_DIR [--dtype bf16] [--t5 FLAN_UL2_DIR]
    python -m tools.kv_convert network  SRC OUT.safetensors [--dtype fp8] [--configs configs.json]
    python -m tools.kv_convert t5       FLAN_UL2_DIR OUT.safetensors [--dtype bf16]
"""
import sys

from kv_core.convert import main

if __name__ == "__main__":
    sys.exit(main())
