// The official JavaScript client, unchanged, against the inbox's gateway: only its base URL and
// its token differ from a program that calls the platform. tests/api/clients.rs runs one
// scenario per process and reads the one JSON line it prints.
//
// Environment: INBOX_URL (the inbox's base), INBOX_TOKEN (one of INBOX_CREATE_TOKENS),
// FAKE_VERSION (a version id of the fake platform's model `acme/echo`).

import Replicate from "replicate";

const replicate = new Replicate({
  auth: process.env.INBOX_TOKEN,
  baseUrl: `${process.env.INBOX_URL}/v1`,
});
const version = process.env.FAKE_VERSION;

const scenarios = {
  run_version: () =>
    replicate.run(`acme/echo:${version}`, { input: { prompt: "hi", steps: 2 } }),
  run_model: () =>
    replicate.run("acme/echo", { input: { prompt: "model", steps: 1 } }),
  run_longer_than_the_wait: () =>
    replicate.run(`acme/echo:${version}`, {
      input: { prompt: "late", steps: 1, start_ms: 0, step_ms: 2500 },
      wait: { mode: "block", timeout: 1 },
    }),
  create_and_wait: async () => {
    let prediction = await replicate.predictions.create({
      version,
      input: { steps: 2 },
    });
    prediction = await replicate.wait(prediction, {});
    return { id: prediction.id, status: prediction.status, output: prediction.output };
  },
};

const scenario = scenarios[process.argv[2]];
if (!scenario) {
  console.error(`no scenario ${process.argv[2]}`);
  process.exit(2);
}
console.log(JSON.stringify(await scenario()));
