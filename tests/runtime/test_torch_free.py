"""The runtime imports and runs with torch unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_runs_without_torch(tiny_bundle):
    script = textwrap.dedent(
        """
        import sys
        for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
            del sys.modules[name]
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import sammed_edge.runtime as rt
        from sammed_edge.runtime import bench, cli, eval_report, evaluate, io, metrics, processing, samples
        predictor = rt.Predictor.from_bundle(sys.argv[1])
        predictor.set_image(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
        masks, iou, low_res = predictor.predict(point_coords=[[40, 30]], point_labels=[1])
        assert masks.shape == (3, 60, 80) and iou.shape == (3,)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tiny_bundle)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
