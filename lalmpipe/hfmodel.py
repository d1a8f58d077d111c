"""Write a Hugging Face model folder from a GGUF file, offline.

Usage (with the Python of an environment that has torch, transformers, gguf
and accelerate; lalmpipe.localserver runs it in the transformers engine's):
    python hfmodel.py MODEL.gguf OUT_DIR

vLLM's CPU build and transformers serve load only Hugging Face folders, and no
hub can be reached here: the folder is made once from the GGUF the project
already has. Only the standard library is imported at the top, so this file
runs by its path in an environment where lalmpipe is not installed.
"""
import os
import shutil
import sys


def convert(gguf_path: str, out_dir: str) -> None:
    """Load the GGUF dequantized to bfloat16 and save it, with its tokenizer, as a folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a model loaded from a quantized GGUF: the same weights
    # go into a fresh model built from the config without its quantization entry
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model_type = config.pop("model_type")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config),
                                             dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    tmp = out_dir + ".part"
    shutil.rmtree(tmp, ignore_errors=True)      # what an interrupted conversion left
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python hfmodel.py MODEL.gguf OUT_DIR")
    convert(sys.argv[1], sys.argv[2])
