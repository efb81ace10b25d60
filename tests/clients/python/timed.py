"""For benches/gateway.rs: `run()` through the inbox on a model that finishes after the create's
wait, RUNS times, timing when the client asked and when it returned. The client is unchanged; an
httpx event hook (passed through `replicate.Client`'s keyword arguments) notes when each request
starts. Prints one JSON line per run: the prediction's id, the wall-clock seconds at which each
`GET /v1/predictions/{id}` started, and when `run()` returned.

Environment: INBOX_URL, INBOX_TOKEN, FAKE_VERSION, RUNS, STEP_MS."""

import json
import os
import time

import replicate

asked = []
client = replicate.Client(
    api_token=os.environ["INBOX_TOKEN"],
    base_url=os.environ["INBOX_URL"],
    event_hooks={"request": [lambda request: asked.append((request.method, request.url.path, time.time()))]},
)
version = os.environ["FAKE_VERSION"]
for _ in range(int(os.environ["RUNS"])):
    asked.clear()
    output = client.run(
        f"acme/echo:{version}",
        input={"steps": 1, "start_ms": 0, "step_ms": int(os.environ["STEP_MS"])},
        wait=1,
    )
    returned = time.time()
    reads = [(path, at) for method, path, at in asked if method == "GET" and path.startswith("/v1/predictions/")]
    print(json.dumps({
        "id": reads[-1][0].rsplit("/", 1)[-1] if reads else None,
        "gets": [at for _, at in reads],
        "returned": returned,
        "output": output,
    }), flush=True)
