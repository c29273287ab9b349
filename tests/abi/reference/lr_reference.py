"""Reference LR multipliers, written out from diffusers 0.21 optimization.py's lambdas (the
functions get_scheduler builds), for the steps the C++ test checks. Output: tests/abi/reference/lr_reference.txt
(name total warmup base_lr step factor). Pure Python so it runs anywhere; regenerate with
`python3 tests/abi/reference/lr_reference.py > tests/abi/reference/lr_reference.txt`."""
import math

def constant(s, T, W, lr): return 1.0
def constant_with_warmup(s, T, W, lr):
    return s / max(1.0, W) if s < W else 1.0
def linear(s, T, W, lr):
    if s < W: return s / max(1, W)
    return max(0.0, (T - s) / max(1, T - W))
def cosine(s, T, W, lr, num_cycles=0.5):
    if s < W: return s / max(1, W)
    p = (s - W) / max(1, T - W)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * p)))
def cosine_with_restarts(s, T, W, lr, num_cycles=1):
    if s < W: return s / max(1, W)
    p = (s - W) / max(1, T - W)
    if p >= 1.0: return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * p) % 1.0))))
def polynomial(s, T, W, lr, lr_end=1e-7, power=1.0):
    if s < W: return s / max(1, W)
    if s > T: return lr_end / lr
    rng = lr - lr_end
    decay_steps = T - W
    pct = 1 - (s - W) / decay_steps
    return (rng * pct ** power + lr_end) / lr

cases = [(100, 10, 1e-3), (37, 0, 2e-4), (1000, 250, 1e-4)]
steps = [0, 1, 5, 9, 10, 11, 20, 36, 37, 50, 99, 100, 101, 250, 500, 999, 1000, 1200]
for f in [constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial]:
    for T, W, lr in cases:
        for s in steps:
            print(f.__name__, T, W, repr(lr), s, repr(f(s, T, W, lr)))
# non-default parameters
for T, W, lr in cases:
    for s in steps:
        print("cosine:num_cycles=1.5", T, W, repr(lr), s, repr(cosine(s, T, W, lr, 1.5)))
        print("cosine_with_restarts:num_cycles=3", T, W, repr(lr), s, repr(cosine_with_restarts(s, T, W, lr, 3)))
        print("polynomial:power=2", T, W, repr(lr), s, repr(polynomial(s, T, W, lr, power=2.0)))
