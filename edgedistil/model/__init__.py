"""The package's own Llama/Qwen2 decoder and HF-folder I/O."""

from edgedistil.model.edge_lm import EdgeConfig, EdgeLM
from edgedistil.model.hf_io import load_hf_folder, read_head_rows, read_hf_config, save_hf_folder, write_head_rows

__all__ = ["EdgeConfig", "EdgeLM", "load_hf_folder", "read_head_rows", "read_hf_config", "save_hf_folder",
           "write_head_rows"]
