"""Try-on rendering throughput and memory.

Prints, per image size (256 and 512 px): img/s of a bare pyrender loop (the same head and frame
meshes, only the camera moving) beside the full pipeline (view plan, fitting, per-view scene,
lens recolouring, background compositing, landmarks, PNG encoding), and the pipeline's overhead
as a ratio; img/s with 1 and N processes; and resident memory every 1,000 renders up to
--memory-renders (default 10,000), which must stay flat. The GL_RENDERER line says whether this
ran on llvmpipe (CPU) or a GPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np


def _asset_and_spec(size: int):
    from glassfinder.catalog.build import build_frame, export_glb
    from glassfinder.catalog.design import sample_colourways, sample_design
    from glassfinder.catalog.loader import import_glb
    from glassfinder.render.spec import RenderSpec

    rng = np.random.default_rng([1, 1])
    design = sample_design(rng, "wayfarer")
    glb = export_glb(build_frame(design, sample_colourways(rng, design, 1)[0]))
    spec = RenderSpec(image_px=size, face_count=16)
    return import_glb(glb), spec, "cd" * 32


def bare_loop(size: int, count: int) -> tuple[float, str]:
    """img/s of pyrender alone: one scene built once, only the camera moves."""
    from glassfinder.heads.procedural import build_head
    from glassfinder.render.preview import _look_at
    from glassfinder.render.tryon import AssetMeshes, DeterministicScene, TryOnRenderer, pyrender

    scene_asset, _, _ = _asset_and_spec(size)
    asset = AssetMeshes(scene_asset)
    head = build_head(1)
    r = TryOnRenderer(size)
    scene = DeterministicScene(bg_color=[0, 0, 0, 0], ambient_light=[0.3] * 3)
    for _, m in head.meshes:
        scene.add(pyrender.Mesh.from_trimesh(m, smooth=True))
    from glassfinder.render.fit import fit_frame

    fit = fit_frame(asset.parts, head.anchors)
    for role, mesh, pose in asset.meshes:
        side = role.removeprefix("temple_") if role.startswith("temple_") else None
        scene.add(mesh, pose=(fit.temple_poses.get(side, fit.front_pose) if side else fit.front_pose) @ pose)
    scene.add(pyrender.DirectionalLight(intensity=3.0), pose=_look_at(np.array([0.3, 0.5, 1.0]), np.zeros(3)))
    scene.add(
        pyrender.DirectionalLight(intensity=1.0), pose=_look_at(np.array([-0.5, 0.2, 1.0]), np.zeros(3))
    )
    cam = scene.add(pyrender.PerspectiveCamera(yfov=np.radians(22)), pose=np.eye(4))
    r._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)  # warm-up (shader compile)
    start = time.perf_counter()
    for i in range(count):
        yaw = np.radians(-30 + 60 * (i % 13) / 12)
        eye = np.array([0.6 * np.sin(yaw), 0.0, 0.6 * np.cos(yaw)])
        scene.set_pose(cam, _look_at(eye, np.zeros(3)))
        r._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
    rate = count / (time.perf_counter() - start)
    name = r.gl_renderer()
    r.close()
    return rate, name


def pipeline_loop(size: int, count: int, first_view: int = 0, image_format: str = "png") -> float:
    """img/s of the pipeline's per-view work (heads cached as in a worker)."""
    from glassfinder.heads.procedural import build_head
    from glassfinder.render.spec import plan_view
    from glassfinder.render.tryon import AssetMeshes, TryOnRenderer

    scene_asset, spec, sha = _asset_and_spec(size)
    asset = AssetMeshes(scene_asset)
    r = TryOnRenderer(size)
    heads = {i: build_head(i) for i in range(spec.face_count)}
    r.render(asset, heads[0], plan_view(spec, sha, 0, fixed_lens=None))  # warm-up
    start = time.perf_counter()
    for i in range(first_view, first_view + count):
        view = plan_view(spec, sha, i, fixed_lens=None)
        r.render(asset, heads[view.face_index - spec.face_first], view).encode(image_format)
    rate = count / (time.perf_counter() - start)
    r.close()
    return rate


def _one_thread_each() -> None:
    os.environ.setdefault("LP_NUM_THREADS", "1")  # as the render job's workers do


def _pool_job(args: tuple[int, int, int]) -> float:
    size, count, first = args
    return pipeline_loop(size, count, first)


def memory_run(size: int, total: int) -> list[tuple[int, float]]:
    from glassfinder.heads.procedural import build_head
    from glassfinder.render.spec import plan_view
    from glassfinder.render.tryon import AssetMeshes, TryOnRenderer

    scene_asset, spec, sha = _asset_and_spec(size)
    asset = AssetMeshes(scene_asset)
    r = TryOnRenderer(size)
    heads = {i: build_head(i) for i in range(spec.face_count)}
    points = []
    for i in range(1, total + 1):
        view = plan_view(spec, sha, i, fixed_lens=None)
        r.render(asset, heads[view.face_index], view).encode()
        if i % 1000 == 0:
            with open("/proc/self/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            points.append((i, rss / 1024))
            print(f"  after {i:>6} renders: RSS {rss / 1024:7.1f} MiB", flush=True)
    r.close()
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=150, help="renders per throughput measurement")
    parser.add_argument("--memory-renders", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    for size in (256, 512):
        with ctx.Pool(1) as pool:  # a fresh process (one GL context) per measurement
            bare, gl_name = pool.apply(bare_loop, (size, args.count))
        with ctx.Pool(1) as pool:
            pipe = pool.apply(pipeline_loop, (size, args.count))
        with ctx.Pool(1) as pool:
            pipe_jpeg = pool.apply(pipeline_loop, (size, args.count, 0, "jpeg"))
        print(f"{size} px on {gl_name}")
        print(f"  bare pyrender loop : {bare:6.1f} img/s per process")
        print(
            f"  pipeline, PNG      : {pipe:6.1f} img/s per process  (overhead {1 - pipe / bare:+.0%} vs bare)"
        )
        print(
            f"  pipeline, JPEG     : {pipe_jpeg:6.1f} img/s per process"
            f"  (overhead {1 - pipe_jpeg / bare:+.0%} vs bare)"
        )
        n = args.processes
        start = time.perf_counter()
        with ctx.Pool(n, initializer=_one_thread_each if n > 1 else None) as pool:
            pool.map(_pool_job, [(size, args.count, k * args.count) for k in range(n)])
        total = n * args.count / (time.perf_counter() - start)
        print(
            f"  {n} processes        : {total:6.1f} img/s in all"
            f" (x{total / pipe:.2f} of one; includes start-up)"
        )
    if args.memory_renders:
        print(f"memory over {args.memory_renders:,} renders at 256 px (one process)")
        with ctx.Pool(1) as pool:
            points = pool.apply(memory_run, (256, args.memory_renders))
        if len(points) >= 2:
            print(
                f"  growth from {points[0][0]} to {points[-1][0]} renders:"
                f" {points[-1][1] - points[0][1]:+.1f} MiB"
            )


if __name__ == "__main__":
    main()
