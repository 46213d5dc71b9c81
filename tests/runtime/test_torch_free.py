"""The runtime imports and runs with torch unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_runs_without_torch():
    script = textwrap.dedent(
        """
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import sammed_edge.runtime as rt
        from sammed_edge.runtime import io, metrics, processing
        policy = rt.family_policy("sam_med2d")
        tensor, geometry = processing.preprocess_image(np.zeros((30, 40, 3), np.uint8), policy)
        logits = processing.postprocess_logits(np.zeros((1, 64, 64), np.float32), geometry, policy)
        assert tensor.shape == (1, 3, 256, 256) and logits.shape == (1, 30, 40)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
