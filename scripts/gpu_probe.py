"""One-minute CUDA probe for issue 61's sampling levers: the SD v1.5 UNet (random weights, bf16) at
the DPOK sampler's shape (2B = 32 guided rows, 64x64 latents), eager against the same eager UNet
replayed from a captured CUDA graph (the launch overhead CUDA graphs remove), and each SDPA backend
at SD v1.5's first self-attention (32 rows x 8 heads x 4096 tokens x head dim 40).  Writes
$OUT/probe.json."""
import json, os, time
import torch
from diffusers import UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from tools.random_models import SD15_UNET

out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
dev, dt = "cuda", torch.bfloat16
with torch.device(dev):
    unet = UNet2DConditionModel(**SD15_UNET).to(dt).eval().requires_grad_(False)
x = torch.randn(32, 4, 64, 64, device=dev, dtype=dt)
t = torch.full((32,), 500, device=dev, dtype=torch.long)
c = torch.randn(32, 77, 768, device=dev, dtype=dt)


def timed(fn, n=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000


with torch.no_grad():
    out["unet_eager_ms"] = timed(lambda: unet(x, t, c, return_dict=False))
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                unet(x, t, c, return_dict=False)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = unet(x, t, c, return_dict=False)
        out["unet_eager_cudagraph_ms"] = timed(g.replay)
    except Exception as e:  # noqa: BLE001 - a probe records what failed
        out["unet_eager_cudagraph_error"] = repr(e)[:300]
    q, k, v = (torch.randn(32, 8, 4096, 40, device=dev, dtype=dt) for _ in range(3))
    out["sdpa_default_ms"] = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 20)
    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel(b):
                out[f"sdpa_{b.name.lower()}_ms"] = timed(
                    lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 20)
        except Exception as e:  # noqa: BLE001
            out[f"sdpa_{b.name.lower()}_error"] = repr(e)[:200]
print(json.dumps(out, indent=1))
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w") as f:
    json.dump(out, f, indent=1)
