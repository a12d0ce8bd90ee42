"""Writes the PyTorch pickle test checkpoints beside this file (run with Debian's /usr/bin/python3 and python3-torch).

One tiny random Llama state dict, saved four ways with the same config.json:
  single/    pytorch_model.bin (torch.save, zip format)
  sharded/   pytorch_model-00001-of-00002.bin, pytorch_model-00002-of-00002.bin, pytorch_model.bin.index.json
  legacy/    pytorch_model.bin in the pre-1.6 (non-zip) format: PyBridge cannot read it, the library must refuse clearly
  reference/ model.safetensors with the same tensors (written with the parity kit's pure-Python safetensors shim)
"""
import json, os, sys
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(here, "..", "..", "..", "..", "..", "shared", "reference", "hf-parity", "shims"))
from safetensors.torch import save_file  # the kit's shim when no real package is installed

config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
          "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
g = torch.Generator().manual_seed(12)
def rnd(*shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale
sd = {"model.embed_tokens.weight": rnd(64, 16, scale=0.5), "model.norm.weight": 1 + rnd(16, scale=0.2), "lm_head.weight": rnd(64, 16, scale=0.5)}
p = "model.layers.0."
sd.update({p + "self_attn.q_proj.weight": rnd(16, 16), p + "self_attn.k_proj.weight": rnd(8, 16), p + "self_attn.v_proj.weight": rnd(8, 16),
           p + "self_attn.o_proj.weight": rnd(16, 16), p + "mlp.gate_proj.weight": rnd(32, 16), p + "mlp.up_proj.weight": rnd(32, 16),
           p + "mlp.down_proj.weight": rnd(16, 32), p + "input_layernorm.weight": 1 + rnd(16, scale=0.2),
           p + "post_attention_layernorm.weight": 1 + rnd(16, scale=0.2)})

def folder(name):
    d = os.path.join(here, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return d

torch.save(sd, os.path.join(folder("single"), "pytorch_model.bin"))
names = sorted(sd)
shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
d = folder("sharded")
for file, keys in shards.items():
    torch.save({k: sd[k] for k in keys}, os.path.join(d, file))
with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())},
               "weight_map": {k: file for file, keys in shards.items() for k in keys}}, f, indent=2)
torch.save(sd, os.path.join(folder("legacy"), "pytorch_model.bin"), _use_new_zipfile_serialization=False)
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder("reference"), "model.safetensors"))
print("torch", torch.__version__, "wrote", ", ".join(sorted(os.listdir(here))))
