"""Inside the worker container: download a job's adapter from the API and load it with plain peft.

    python - JOB_ID KEY < load_adapter.py

(scenario.py pipes it in through `docker compose exec`; the worker image has torch, transformers and peft,
and the tiny base models in /models.)
"""

import sys
import tempfile
import urllib.request
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.archive import unpack

job_id, key = sys.argv[1:]
request = urllib.request.Request(
    f"http://api:8000/v1/fine_tuning/jobs/{job_id}/adapter", headers={"Authorization": f"Bearer {key}"}
)
with tempfile.TemporaryDirectory() as folder, urllib.request.urlopen(request, timeout=60) as response:
    archive = Path(folder, "adapter.tar.gz")
    archive.write_bytes(response.read())
    adapter = unpack(archive, Path(folder, "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # shipped in the archive beside the adapter
    prompt = tokenizer("reverse: abc =", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained("/models/mamba-tiny")
    with torch.no_grad():
        before = base(input_ids=prompt).logits
        after = PeftModel.from_pretrained(base, adapter)(input_ids=prompt).logits
change = (after - before).abs().max().item()
assert change > 1e-3, f"the adapter leaves mamba-tiny's logits as they were (max change {change})"
print(f"adapter of {job_id} loaded with peft on /models/mamba-tiny: logits move by up to {change:.3f}")
