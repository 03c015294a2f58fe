// The official OpenAI Node SDK against `ember serve` (run by tests/openai_sdk_test.cpp):
//   node tests/openai_sdk/embeddings.mjs BASE_URL API_KEY EXPECTED.json
// BASE_URL ends in /v1. EXPECTED.json holds {model, texts, embeddings, embeddings_32, prompt_tokens,
// token_ids, token_embedding}: the vectors the engine computes for those inputs. Prints every
// mismatch and exits 1 if there is any.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const [baseURL, apiKey, expectedPath] = process.argv.slice(2);
if (!baseURL || !apiKey || !expectedPath) {
  console.error('usage: node embeddings.mjs BASE_URL API_KEY EXPECTED.json');
  process.exit(2);
}
const expected = JSON.parse(readFileSync(expectedPath, 'utf8'));
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const failures = [];
const check = (ok, what) => {
  if (!ok) failures.push(what);
};

// Float32 values equal within 1e-6 (the SDK's base64 decoding gives float32; JSON numbers are doubles).
function checkVector(got, want, what) {
  if (!got || got.length !== want.length) {
    failures.push(`${what}: ${got ? got.length : 'no'} values, want ${want.length}`);
    return;
  }
  for (let i = 0; i < want.length; ++i) {
    if (!(Math.abs(Math.fround(got[i]) - Math.fround(want[i])) <= 1e-6)) {
      failures.push(`${what}: value ${i} is ${got[i]}, want ${want[i]}`);
      return;
    }
  }
}

function checkList(response, wants, what) {
  check(response.object === 'list', `${what}: object ${response.object}`);
  check(response.model === expected.model, `${what}: model ${response.model}`);
  check(response.data.length === wants.length, `${what}: ${response.data.length} embeddings, want ${wants.length}`);
  response.data.forEach((item, i) => {
    check(item.object === 'embedding', `${what}[${i}]: object ${item.object}`);
    check(item.index === i, `${what}[${i}]: index ${item.index}`);
    if (wants[i]) checkVector(item.embedding, wants[i], `${what}[${i}]`);
  });
}

async function expectError(promise, ErrorClass, status, fields, what) {
  try {
    await promise;
    failures.push(`${what}: no error`);
  } catch (e) {
    check(e instanceof ErrorClass, `${what}: ${e.constructor.name} (${e.message}), want ${ErrorClass.name}`);
    check(e.status === status, `${what}: status ${e.status}, want ${status}`);
    for (const [key, value] of Object.entries(fields)) {
      check(e[key] === value, `${what}: ${key} ${JSON.stringify(e[key])}, want ${JSON.stringify(value)}`);
    }
  }
}

const { model, texts } = expected;

// No encoding_format: the SDK asks for base64 and decodes it into floats.
const single = await client.embeddings.create({ model, input: texts[0] });
checkList(single, [expected.embeddings[0]], 'one text, base64');
check(single.usage.prompt_tokens === expected.prompt_tokens[0], `usage ${JSON.stringify(single.usage)}`);

const many = await client.embeddings.create({ model, input: texts });
checkList(many, expected.embeddings, 'all texts, base64');
const total = expected.prompt_tokens.reduce((a, b) => a + b, 0);
check(many.usage.prompt_tokens === total && many.usage.total_tokens === total, `usage ${JSON.stringify(many.usage)}`);

const floats = await client.embeddings.create({ model, input: texts, encoding_format: 'float' });
checkList(floats, expected.embeddings, 'all texts, float');
floats.data.forEach((item, i) => {
  check(Array.isArray(item.embedding), `float[${i}] is not an array`);
  const norm = Math.sqrt(item.embedding.reduce((s, x) => s + x * x, 0));
  check(Math.abs(norm - 1) < 1e-5, `float[${i}] has norm ${norm}`);
});

for (const encoding_format of [undefined, 'float']) {
  const short = await client.embeddings.create({ model, input: texts, dimensions: 32, encoding_format });
  checkList(short, expected.embeddings_32, `dimensions 32, ${encoding_format ?? 'base64'}`);
}

const tokens = await client.embeddings.create({ model, input: [expected.token_ids] });
checkList(tokens, [expected.token_embedding], 'token ids');

// Errors come back as the SDK's typed errors, with OpenAI's fields.
const wrongKey = new OpenAI({ baseURL, apiKey: `${apiKey}-wrong`, maxRetries: 0 });
await expectError(wrongKey.embeddings.create({ model, input: 'x' }), OpenAI.AuthenticationError, 401,
  { code: 'invalid_api_key', type: 'authentication_error' }, 'wrong key');
await expectError(client.embeddings.create({ model: 'text-embedding-3-small', input: 'x' }), OpenAI.NotFoundError,
  404, { code: 'model_not_found', param: 'model' }, 'unknown model');
await expectError(client.embeddings.create({ model, input: 'x', dimensions: 16 }), OpenAI.BadRequestError, 400,
  { param: 'dimensions', type: 'invalid_request_error' }, 'dimensions 16');

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model, `models ${JSON.stringify(models.data)}`);

if (failures.length > 0) {
  console.error(failures.join('\n'));
  process.exit(1);
}
console.log(`openai ${VERSION}: all checks passed`);
