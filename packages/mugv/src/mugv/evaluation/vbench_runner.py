"""Runs VBench / VBench-I2V inside the interpreter where the ``vbench`` package is installed.

Started by :mod:`mugv.evaluation.vbench_suite` as ``PYTHON vbench_runner.py REQUEST.json`` (by path, so
that interpreter needs neither mugv nor its dependencies): standard library + vbench only.
The request names the videos, dimensions, mode, device, output folder and prompts; the models
come from ``VBENCH_CACHE_DIR`` (set by the caller to the local model folder) with
``local=True``. VBench writes ``OUTPUT/NAME_eval_results.json``; this script then writes
``OUTPUT/NAME_done.json`` with the path of that file.
"""

import json
import os
import sys

# run by path: its folder (mugv/eval) heads sys.path; drop it so that `vbench` is the package
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]


def main(request_path):
    with open(request_path) as f:
        req = json.load(f)
    os.makedirs(req["output"], exist_ok=True)
    kwargs = dict(
        videos_path=req["videos"],
        name=req["name"],
        dimension_list=req["dimensions"],
        local=True,
        mode=req.get("mode", "custom_input"),
    )
    if req.get("prompts"):
        kwargs["prompt_list"] = req["prompts"]
    if req["suite"] == "vbench-i2v":
        import vbench2_beta_i2v
        from vbench2_beta_i2v import VBenchI2V

        info = os.path.join(os.path.dirname(vbench2_beta_i2v.__file__), "vbench2_i2v_full_info.json")
        bench = VBenchI2V(req["device"], info, req["output"])
        if req.get("image_folder"):
            kwargs["custom_image_folder"] = req["image_folder"]
        kwargs["resolution"] = req.get("resolution", "1-1")
    else:
        import vbench
        from vbench import VBench

        info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
        bench = VBench(req["device"], info, req["output"])
    bench.evaluate(**kwargs)
    results = os.path.join(req["output"], req["name"] + "_eval_results.json")
    with open(os.path.join(req["output"], req["name"] + "_done.json"), "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main(sys.argv[1])
