// E2B's JS SDK against Chaser (tests/integration/test_e2b.py::test_the_js_sdk): create, run, kill.
// The environment names the server (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY); one JSON line out.
import { Sandbox } from 'e2b'

const sandbox = await Sandbox.create({ metadata: { sdk: 'js' } })
const result = await sandbox.commands.run('echo from-js; whoami')
let failed = null
try {
  await sandbox.commands.run('exit 7')
} catch (error) {
  failed = error.exitCode
}
await sandbox.kill()
console.log(JSON.stringify({
  sandboxId: sandbox.sandboxId, stdout: result.stdout, exitCode: result.exitCode, failed,
  running: await sandbox.isRunning(),
}))
