"""A stand-in GPU job: claims a slot as every marseval GPU command does, records when it held
which device (one JSON line appended to argv[1]), and holds it for argv[2] seconds."""

import json
import os
import sys
import time

from marseval.gpu import claim_gpu

slot = claim_gpu()
start = time.time()
time.sleep(float(sys.argv[2]))
record = {"pid": os.getpid(), "device": slot.device, "source": slot.source,
          "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(record) + "\n")
