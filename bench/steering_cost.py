"""Cost per generated token of every steering method against unsteered decoding of the same VLM, same run and device:
`python -m bench.run steering_cost`. On a GPU (when one is lent) it runs in bfloat16 with the gpu profile's VLM; on
CPU in float32 at the threads given by $STEERING_BENCH_THREADS (default 2)."""
from __future__ import annotations
import json, os, time

N_SCENES = int(os.environ.get("STEERING_BENCH_SCENES", "16"))
MAX_NEW = int(os.environ.get("STEERING_BENCH_TOKENS", "32"))
THREADS = int(os.environ.get("STEERING_BENCH_THREADS", "2"))
MODEL = os.environ.get("STEERING_BENCH_MODEL", "vlm-calib-parts")
DESCRIPTION = (f"Milliseconds per generated token of each tokenlab.steering method at its paper defaults (greedy, batch 16, "
               f"{N_SCENES} held-out ObjectWorld scenes of the model's training world, at most {MAX_NEW} new tokens; OPERA's penalty "
               f"without retrospection, which needs batch 1) and of OPERA with 3 beams, against the unsteered decoding measured in the same run (the peer); ratio = method / unsteered "
               f"(for OPERA, against unsteered 3-beam search). Model ${{STEERING_BENCH_MODEL}} = {MODEL}; CUDA + bfloat16 when a GPU is "
               f"present, else CPU float32 at $STEERING_BENCH_THREADS = {THREADS} threads.")


def run() -> dict:
    import torch
    from tokenlab.vision.train import load_trained, trained_world, CAPTION_PROMPT
    from tokenlab.steering import Steer, VCD, M3ID, DoLa, VISTA, PAI, OPERA
    cuda = torch.cuda.is_available()
    if not cuda: torch.set_num_threads(THREADS)
    vlm = load_trained(MODEL, device="cuda" if cuda else "cpu", dtype=torch.bfloat16 if cuda else torch.float32, batch_size=16)
    world = trained_world(MODEL)
    images = [s.image for s in world.scenes(N_SCENES, start=1_000_000)]

    def ms_per_token(methods, **dec) -> float:
        vlm.caption(images[:2], CAPTION_PROMPT, steer=Steer(methods) if methods else None, max_new_tokens=4, **dec)   # warm-up
        if cuda: torch.cuda.synchronize()
        t = time.perf_counter()
        vlm.caption(images, CAPTION_PROMPT, steer=Steer(methods) if methods else None, max_new_tokens=MAX_NEW, **dec)
        if cuda: torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t) / max(sum(vlm.record["new_tokens"]), 1)

    base, base_beam = ms_per_token([]), ms_per_token([], num_beams=3)
    ours = {}
    for name, ms, dec, ref in [("vcd", [VCD()], {}, base), ("m3id", [M3ID()], {}, base), ("dola", [DoLa()], {}, base),
                               ("vista", [VISTA()], {}, base), ("vista_vsv_only", [VISTA(alpha=0)], {}, base),
                               ("pai", [PAI()], {}, base), ("opera_penalty_greedy", [OPERA(threshold=0)], {}, base),
                               ("opera_penalty_beam3", [OPERA(threshold=0)], {"num_beams": 3}, base_beam), ("vista+vcd", [VISTA(), VCD()], {}, base)]:
        m = ms_per_token(ms, **dec)
        ours[f"{name}_ms_per_token"] = round(m, 2); ours[f"{name}_ratio"] = round(m / ref, 2)
    return {"ours": ours, "peers": {"unsteered": {"greedy_ms_per_token": round(base, 2), "beam3_ms_per_token": round(base_beam, 2)}},
            "config": {"model": MODEL, "scenes": N_SCENES, "max_new_tokens": MAX_NEW, "device": "cuda" if cuda else "cpu",
                       "dtype": "bfloat16" if cuda else "float32", "threads": None if cuda else THREADS}}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
