#!/usr/bin/env python3
"""Writes the reference fixtures the Rust tests compare against.

    pip install torch && python3 tools/gen_fixtures.py

Fixtures are small JSON files under tests/fixtures/, committed so that CI
needs no Python. Re-running this script must reproduce them exactly.
"""
import json
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def adamw_fixture():
    """Several steps of torch.optim.AdamW on given gradients, per config."""
    g = torch.Generator().manual_seed(0)
    cases = []
    configs = [
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
        dict(lr=5e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0),
        dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),  # torch defaults
    ]
    for cfg in configs:
        shapes = [[5], [3, 4], [33]]
        params = [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]
        init = [p.clone() for p in params]
        params = [torch.nn.Parameter(p) for p in params]
        opt = torch.optim.AdamW(params, foreach=False, **cfg)
        steps = []
        for _ in range(5):
            grads = [torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.5 for p in params]
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
            steps.append(
                dict(
                    grads=[gr.flatten().tolist() for gr in grads],
                    params=[p.detach().flatten().tolist() for p in params],
                )
            )
        cases.append(
            dict(
                config=dict(lr=cfg["lr"], beta1=cfg["betas"][0], beta2=cfg["betas"][1],
                            eps=cfg["eps"], weight_decay=cfg["weight_decay"]),
                shapes=shapes,
                init=[p.flatten().tolist() for p in init],
                steps=steps,
            )
        )
    return dict(torch_version=torch.__version__, cases=cases)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "adamw.json"
    path.write_text(json.dumps(adamw_fixture()) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
