"""Loading Keras 3 on the torch backend. Keras reads its backend once, at import: set it to torch when Keras is not
yet imported, and refuse, in one line, a Keras that is already running on another backend."""
from __future__ import annotations

import os
import sys


def load_keras():
    """-> the keras module, on the torch backend."""
    if "keras" not in sys.modules:
        asked = os.environ.get("KERAS_BACKEND")
        if asked and asked != "torch":
            raise RuntimeError(f"KERAS_BACKEND={asked!r}: tuneforge's Keras models run on Keras' torch backend; "
                               "unset KERAS_BACKEND or set it to 'torch'")
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        raise ImportError("tuneforge's Keras route needs Keras 3: pip install 'tuneforge[keras]' "
                          "(or pip install 'keras>=3')") from None
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ImportError(f"tuneforge's Keras route needs Keras 3, found keras {version}: "
                          "pip install -U 'keras>=3'")
    backend = keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(f"Keras is already running on the {backend!r} backend, and tuneforge's Keras models need "
                           "the torch backend: set KERAS_BACKEND=torch before anything imports keras")
    return keras
