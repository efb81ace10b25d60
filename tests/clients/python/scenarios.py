"""The official Python client, unchanged, against the inbox's gateway: only its base URL and its
token differ from a program that calls the platform. tests/api/clients.rs runs one scenario per
process and reads the one JSON line it prints.

Environment: INBOX_URL (the inbox's base), INBOX_TOKEN (one of INBOX_CREATE_TOKENS), FAKE_VERSION
(a version id of the fake platform's model `acme/echo`)."""

import json
import os
import sys
import tempfile

import replicate

client = replicate.Client(api_token=os.environ["INBOX_TOKEN"], base_url=os.environ["INBOX_URL"])
VERSION = os.environ["FAKE_VERSION"]


def scenario(name):
    if name == "run_version":
        return client.run(f"acme/echo:{VERSION}", input={"prompt": "hi", "steps": 2})
    if name == "run_model":
        return client.run("acme/echo", input={"prompt": "model", "steps": 1})
    if name == "run_longer_than_the_wait":
        # Prefer: wait=1 on a model that takes longer: the answer says `starting`, and the client
        # polls GET /v1/predictions/{id} until it is done.
        return client.run(
            f"acme/echo:{VERSION}",
            input={"prompt": "late", "steps": 1, "start_ms": 0, "step_ms": 2500},
            wait=1,
        )
    if name == "create_and_wait":
        prediction = client.predictions.create(version=VERSION, input={"steps": 2})
        prediction.wait()
        return {"id": prediction.id, "status": prediction.status, "output": prediction.output}
    if name == "cancel":
        prediction = client.predictions.create(
            version=VERSION, input={"steps": 1, "step_ms": 20000}
        )
        canceled = client.predictions.cancel(prediction.id)
        return {"id": prediction.id, "status": canceled.status}
    if name == "file_input":
        with tempfile.NamedTemporaryFile(suffix=".txt") as file:
            file.write(b"an input file")
            file.flush()
            with open(file.name, "rb") as opened:
                return client.run(
                    f"acme/echo:{VERSION}", input={"document": opened, "steps": 1}
                )
    raise SystemExit(f"no scenario {name}")


if __name__ == "__main__":
    print(json.dumps(scenario(sys.argv[1])))
