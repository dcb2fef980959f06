// Drives depot.buildkit.v1 on a running depot-api server (with agents) with the official
// @depot/sdk-node client: GetEndpoint (server-streaming), ReportHealth (client-streaming),
// ReleaseEndpoint, then FinishBuild, all with the build's own token, plus the calls a build
// token may not make for another build.
//
// Environment:
//   DEPOT_API_URL         where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN       an organization token
//   DEPOT_E2E_PROJECT_ID  a project of that organization, to build in
//   DEPOT_E2E_HOLD_DIR    optional: a directory. At each checkpoint ("active": the machine is
//                         held and reported healthy; "released": ReleaseEndpoint answered, the
//                         build still runs) the script writes <checkpoint>.json there and waits
//                         for one line on stdin, so the test can act on the machine in between;
//                         while it waits, the build keeps reporting health.
//
// Prints one JSON document on stdout describing what the server answered; the Python test
// asserts on it. Any unexpected error, including an RPC that succeeds where an error was
// expected, exits non-zero with the error on stderr.

import {readFileSync, renameSync, writeFileSync} from 'node:fs'
import {createRequire} from 'node:module'
import {dirname, join} from 'node:path'
import {performance} from 'node:perf_hooks'
import {createInterface} from 'node:readline'
import {setTimeout as sleep} from 'node:timers/promises'

// See sdk_e2e.mjs: this ESM copy of ConnectError still matches the SDK's (CommonJS) errors.
import {Code, ConnectError} from '@connectrpc/connect'
import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
const projectId = process.env.DEPOT_E2E_PROJECT_ID
const holdDir = process.env.DEPOT_E2E_HOLD_DIR
if (!process.env.DEPOT_API_URL || !token || !projectId) {
  console.error('sdk_machines: set DEPOT_API_URL, DEPOT_E2E_TOKEN and DEPOT_E2E_PROJECT_ID')
  process.exit(2)
}

// The SDK exports only `depot` (its clients), not the generated enums, so `Platform` cannot
// be imported. Its value for AMD64 is read from the enum declaration the SDK ships with, the
// one its TypeScript users are checked against.
function sdkEnumValue(enumName, valueName) {
  const require = createRequire(import.meta.url)
  const declarations = join(dirname(require.resolve('@depot/sdk-node')), 'index.d.ts')
  const body = readFileSync(declarations, 'utf8').match(
    new RegExp(`declare enum ${enumName} \\{([^}]*)\\}`),
  )
  const value = body?.[1].match(new RegExp(`\\b${valueName} = (\\d+)`))
  if (!value) throw new Error(`${enumName}.${valueName} not found in ${declarations}`)
  return Number(value[1])
}
const AMD64 = sdkEnumValue('Platform', 'AMD64')

const HEALTH_REPORTS = 4
const HEALTH_EVERY_MS = 300
const DENIED_REPORTS = 5
const GET_ENDPOINT_ATTEMPTS = 3

const builds = depot.build.v1.BuildService
const buildkit = depot.buildkit.v1.BuildKitService
const auth = (secret) => ({headers: {Authorization: `Bearer ${secret}`}})

// Field names of a response message that carry a value (an empty response has none).
const setFields = (message) => Object.keys(message).filter((k) => message[k] !== undefined)
const since = (start) => Math.round(performance.now() - start)

// The error a call fails with; anything but a ConnectError (or a success) is a test failure.
async function failure(label, call) {
  let result
  try {
    result = await call()
  } catch (err) {
    if (!(err instanceof ConnectError)) {
      throw new Error(`${label}: expected a ConnectError, got: ${err?.stack ?? err}`)
    }
    return {code: err.code, name: err.name, message: err.rawMessage}
  }
  throw new Error(`${label}: expected an error, got a success: ${JSON.stringify(result)}`)
}

// Holds at a checkpoint until the test writes a line on stdin. Meanwhile the build keeps
// reporting health on a client stream of its own, as a real client does while it uses the
// machine (the server cancels a build that stays silent for its liveness window); the stream
// ends when the test says to go on. Returns what that stream did, or null when not holding.
let stdinLines, stdinIterator
async function checkpoint(name, document, buildId, options) {
  if (!holdDir) return null
  const path = join(holdDir, `${name}.json`)
  writeFileSync(`${path}.tmp`, JSON.stringify(document))
  renameSync(`${path}.tmp`, path) // the test never sees half a file
  if (stdinLines === undefined) {
    stdinLines = createInterface({input: process.stdin})
    stdinIterator = stdinLines[Symbol.asyncIterator]()
  }
  let holding = true
  let reports = 0
  async function* keepAlive() {
    while (holding) {
      reports++
      yield {buildId, platform: AMD64}
      await sleep(HEALTH_EVERY_MS)
    }
  }
  const health = buildkit.reportHealth(keepAlive(), options)
  health.catch(() => {}) // awaited below; this only keeps an early failure from being "unhandled"
  const {done} = await stdinIterator.next()
  holding = false
  const response = await health
  if (done) throw new Error(`checkpoint ${name}: stdin closed before the test said to go on`)
  return {reports, response: setFields(response)}
}

// Reads GetEndpoint's stream to its end: every message in order (with when it arrived) and
// the active connection; anything after `active`, or no `active` at all, is an error. An
// attempt that ends in ResourceExhausted (the machine was not ready within the server's wait:
// "retry later") is retried, at most twice, as Depot's integrators retry acquisitions.
async function getEndpoint(buildId, options) {
  const attempts = []
  for (;;) {
    const start = performance.now()
    const messages = []
    let active
    try {
      for await (const message of buildkit.getEndpoint({buildId, platform: AMD64}, options)) {
        const kind = message.connection.case
        messages.push({case: kind ?? null, atMs: since(start)})
        if (active !== undefined) throw new Error(`getEndpoint: ${kind} after active`)
        if (kind === 'active') active = message.connection.value
        else if (kind !== 'pending') throw new Error(`getEndpoint: unexpected message ${kind}`)
      }
    } catch (err) {
      const retry = err instanceof ConnectError && err.code === Code.ResourceExhausted
      if (!retry || attempts.length + 1 >= GET_ENDPOINT_ATTEMPTS) throw err
      attempts.push({messages, error: {code: err.code, message: err.rawMessage}})
      continue
    }
    if (active === undefined) throw new Error('getEndpoint: the stream ended without active')
    attempts.push({messages, error: null, streamEndedMs: since(start)})
    return {attempts, active}
  }
}

async function* healthReports(buildId, count, sent) {
  for (let i = 0; i < count; i++) {
    if (i > 0) await sleep(HEALTH_EVERY_MS)
    sent.push(Math.round(performance.now()))
    yield {buildId, platform: AMD64}
  }
}

async function main() {
  const org = auth(token)
  const out = {platformAmd64: AMD64}

  const build = await builds.createBuild({projectId}, org)
  const other = await builds.createBuild({projectId}, org)
  const mine = auth(build.buildToken)
  out.buildId = build.buildId
  out.otherBuildId = other.buildId

  // --- A build token, used for another build: denied, before any machine is involved ------
  let deniedMessages = 0
  const deniedReports = []
  out.errors = {
    getEndpoint: await failure('getEndpoint, other build', async () => {
      for await (const _ of buildkit.getEndpoint({buildId: other.buildId, platform: AMD64}, mine)) {
        deniedMessages++
      }
    }),
    // Five reports are offered, 300 ms apart; the server refuses at the first, and the SDK
    // surfaces that at once instead of first draining the iterable (deniedReports counts what
    // it took).
    reportHealth: await failure('reportHealth, other build', () =>
      buildkit.reportHealth(healthReports(other.buildId, DENIED_REPORTS, deniedReports), mine),
    ),
    releaseEndpoint: await failure('releaseEndpoint, other build', () =>
      buildkit.releaseEndpoint({buildId: other.buildId, platform: AMD64}, mine),
    ),
  }
  out.errors.getEndpointMessagesBeforeError = deniedMessages
  out.errors.reportHealthReportsPulled = deniedReports.length

  // --- GetEndpoint: pending while the machine starts, then active, then the end -----------
  const endpoint = await getEndpoint(build.buildId, mine)
  const {active, attempts} = endpoint
  out.getEndpointAttempts = attempts
  out.pending = attempts.flatMap((a) => a.messages).filter((m) => m.case === 'pending').length
  out.active = {
    endpoint: active.endpoint,
    serverName: active.serverName,
    clientCert: active.cert?.cert?.cert ?? null,
    clientKey: active.cert?.key?.key ?? null,
    caCert: active.caCert?.cert ?? null,
  }

  // --- ReportHealth: a client stream of a few reports, one empty answer at its end ---------
  const sent = []
  const healthStart = performance.now()
  const health = await buildkit.reportHealth(healthReports(build.buildId, HEALTH_REPORTS, sent), mine)
  out.health = {
    sent: sent.length,
    sentAtMs: sent.map((t) => Math.round(t - healthStart)),
    answeredMs: since(healthStart),
    response: setFields(health),
  }

  out.heldActive = await checkpoint('active', {buildId: build.buildId, ...out.active}, build.buildId, mine)

  // --- ReleaseEndpoint, then (once the test has seen the machine given back) FinishBuild ---
  out.release = setFields(await buildkit.releaseEndpoint({buildId: build.buildId, platform: AMD64}, mine))
  out.heldReleased = await checkpoint('released', {buildId: build.buildId}, build.buildId, mine)
  out.finish = setFields(
    await builds.finishBuild({buildId: build.buildId, result: {case: 'success', value: {}}}, mine),
  )
  // The other build asked for nothing; its own token finishes it.
  await builds.finishBuild(
    {buildId: other.buildId, result: {case: 'success', value: {}}},
    auth(other.buildToken),
  )
  return out
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out) + '\n')
  },
  (err) => {
    console.error(err?.stack ?? err)
    process.exitCode = 1
  },
).finally(() => {
  stdinLines?.close()
  process.stdin.destroy()
})
