// Drives a running depot-api server with the official @depot/sdk-node client.
//
// Environment:
//   DEPOT_API_URL    where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN  an organization token of a fresh organization (no projects yet)
//
// Prints one JSON document on stdout describing what the server answered (int64 values as
// strings); the Python test asserts on it. Any unexpected error, including an RPC that
// succeeds where an error was expected, exits non-zero with the error on stderr.

// Node loads the SDK's CommonJS build (its package.json has no "exports"), which throws the
// CommonJS ConnectError; this ESM import is another copy of the class, and `instanceof` still
// holds because ConnectError checks instances by shape (Symbol.hasInstance).
import {ConnectError} from '@connectrpc/connect'
import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
if (!process.env.DEPOT_API_URL || !token) {
  console.error('sdk_e2e: set DEPOT_API_URL and DEPOT_E2E_TOKEN')
  process.exit(2)
}

// The SDK's clients, counting the RPCs made (the wire test matches them to HTTP/2 streams).
let rpcCount = 0
const counted = (client) =>
  new Proxy(client, {
    get(target, name) {
      const method = target[name]
      if (typeof method !== 'function') return method
      return (...args) => {
        rpcCount++
        return method.apply(target, args)
      }
    },
  })
const projects = counted(depot.core.v1.ProjectService)
const orgs = counted(depot.core.v1.OrganizationService)
const builds = counted(depot.build.v1.BuildService)
const coreBuilds = counted(depot.core.v1.BuildService)

const auth = (secret) => ({headers: {Authorization: `Bearer ${secret}`}})
const org = auth(token)

// A well-formed ID (10 lowercase letters or digits) that no resource has.
const MISSING_ID = 'zzzzzzzzzz'
const KEEP_BYTES = 53687091200n // 50 GiB
const HARDWARE_4X4 = 2
const HARDWARE_8X16 = 4
const PAGED_BUILDS = 7
const PAGE_SIZE = 3

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
  throw new Error(`${label}: expected an error, got a success: ${JSON.stringify(result, jsonSafe)}`)
}

function jsonSafe(_key, value) {
  return typeof value === 'bigint' ? value.toString() : value
}

const time = (ts) => (ts === undefined ? null : ts.toDate().toISOString())

function projectOut(p) {
  return {
    projectId: p.projectId,
    organizationId: p.organizationId,
    name: p.name,
    regionId: p.regionId,
    createdAt: time(p.createdAt),
    cachePolicy:
      p.cachePolicy === undefined
        ? null
        : {
            keepBytes: p.cachePolicy.keepBytes === undefined ? null : p.cachePolicy.keepBytes.toString(),
            keepBytesType: typeof p.cachePolicy.keepBytes,
            keepDays: p.cachePolicy.keepDays,
            keepGb: p.cachePolicy.keepGb,
          },
    hardware: p.hardware,
  }
}

function buildOut(b) {
  return {
    buildId: b.buildId,
    status: b.status,
    createdAt: time(b.createdAt),
    startedAt: time(b.startedAt),
    finishedAt: time(b.finishedAt),
    buildDurationSeconds: b.buildDurationSeconds ?? null,
  }
}

// Field names of a response message that carry a value (an empty response has none).
const setFields = (message) => Object.keys(message).filter((k) => message[k] !== undefined)

async function main() {
  const out = {}

  // --- Organizations and projects -------------------------------------------------------
  const orgList = await orgs.listOrganizations({}, org)
  out.organizations = orgList.organizations.map((o) => ({
    orgId: o.orgId,
    name: o.name,
    createdAt: time(o.createdAt),
  }))

  out.projectsBefore = (await projects.listProjects({}, org)).projects.map(projectOut)

  const a = (
    await projects.createProject(
      {name: 'sdk-e2e-a', regionId: 'us-east-1', cachePolicy: {keepBytes: KEEP_BYTES, keepDays: 7}},
      org,
    )
  ).project
  out.createdA = projectOut(a)

  const b = (
    await projects.createProject(
      {
        name: 'sdk-e2e-b',
        regionId: 'eu-central-1',
        cachePolicy: {keepGb: 20, keepDays: 3},
        hardware: HARDWARE_8X16,
      },
      org,
    )
  ).project
  out.createdB = projectOut(b)

  const c = (await projects.createProject({name: 'sdk-e2e-c', regionId: 'us-east-1'}, org)).project
  out.createdC = projectOut(c)

  out.getA = projectOut((await projects.getProject({projectId: a.projectId}, org)).project)
  out.listAfterCreate = (await projects.listProjects({}, org)).projects.map(projectOut)

  out.updatedA = projectOut(
    (
      await projects.updateProject(
        {
          projectId: a.projectId,
          name: 'sdk-e2e-a-renamed',
          regionId: 'eu-central-1',
          cachePolicy: {keepGb: 100, keepDays: 30},
          hardware: HARDWARE_4X4,
        },
        org,
      )
    ).project,
  )
  out.getAAfterUpdate = projectOut((await projects.getProject({projectId: a.projectId}, org)).project)

  out.resetA = setFields(await projects.resetProject({projectId: a.projectId}, org))

  // --- Project tokens -------------------------------------------------------------------
  const tokens = {}
  tokens.listBefore = (await projects.listTokens({projectId: a.projectId}, org)).tokens.map((t) => ({
    tokenId: t.tokenId,
    description: t.description,
  }))
  const created = await projects.createToken({projectId: a.projectId, description: 'sdk ci'}, org)
  tokens.created = {tokenId: created.tokenId, secretPrefix: created.secret.slice(0, 4)}
  tokens.listAfterCreate = (await projects.listTokens({projectId: a.projectId}, org)).tokens.map((t) => ({
    tokenId: t.tokenId,
    description: t.description,
  }))
  tokens.updateResponse = setFields(
    await projects.updateToken({tokenId: created.tokenId, description: 'sdk ci (renamed)'}, org),
  )
  tokens.listAfterUpdate = (await projects.listTokens({projectId: a.projectId}, org)).tokens.map((t) => ({
    tokenId: t.tokenId,
    description: t.description,
  }))

  // The project token drives builds of its own project only.
  const projectToken = auth(created.secret)
  const byProjectToken = await builds.createBuild({projectId: a.projectId}, projectToken)
  tokens.projectTokenBuild = {buildId: byProjectToken.buildId, buildTokenPrefix: byProjectToken.buildToken.slice(0, 4)}
  await builds.finishBuild({buildId: byProjectToken.buildId, result: {case: 'success', value: {}}}, projectToken)
  tokens.projectTokenGetBuild = buildOut(
    (await coreBuilds.getBuild({buildId: byProjectToken.buildId}, projectToken)).build,
  )
  tokens.projectTokenOtherProject = await failure('project token, other project', () =>
    builds.createBuild({projectId: b.projectId}, projectToken),
  )
  tokens.projectTokenListProjects = await failure('project token, listProjects', () =>
    projects.listProjects({}, projectToken),
  )

  tokens.deleteResponse = setFields(await projects.deleteToken({tokenId: created.tokenId}, org))
  tokens.listAfterDelete = (await projects.listTokens({projectId: a.projectId}, org)).tokens.map((t) => ({
    tokenId: t.tokenId,
    description: t.description,
  }))
  tokens.deletedTokenUse = await failure('deleted project token', () =>
    builds.createBuild({projectId: a.projectId}, projectToken),
  )
  out.tokens = tokens

  // --- Builds: create, finish (success and error), read ---------------------------------
  const ok = await builds.createBuild({projectId: a.projectId}, org)
  const okToken = auth(ok.buildToken)
  const runningOk = buildOut((await coreBuilds.getBuild({buildId: ok.buildId}, org)).build)
  // The build's own token finishes it, and may read it.
  const finishOk = setFields(
    await builds.finishBuild({buildId: ok.buildId, result: {case: 'success', value: {}}}, okToken),
  )
  // Repeating the winning finish is a no-op that succeeds (clients retry).
  await builds.finishBuild({buildId: ok.buildId, result: {case: 'success', value: {}}}, okToken)
  const okAfter = buildOut((await coreBuilds.getBuild({buildId: ok.buildId}, org)).build)
  const okSeenByBuildToken = buildOut((await coreBuilds.getBuild({buildId: ok.buildId}, okToken)).build)

  const bad = await builds.createBuild({projectId: a.projectId}, org)
  await builds.finishBuild({buildId: bad.buildId, result: {case: 'error', value: {error: 'boom: exit 1'}}}, org)
  const badAfter = buildOut((await coreBuilds.getBuild({buildId: bad.buildId}, org)).build)

  out.builds = {
    ok: {
      buildId: ok.buildId,
      buildTokenPrefix: ok.buildToken.slice(0, 4),
      running: runningOk,
      finishResponse: finishOk,
      after: okAfter,
      seenByBuildToken: okSeenByBuildToken,
    },
    failed: {buildId: bad.buildId, after: badAfter},
    listA: (await coreBuilds.listBuilds({projectId: a.projectId}, org)).builds.map(buildOut),
  }

  // --- Paging over core.v1 ListBuilds -----------------------------------------------------
  const pagedIds = []
  for (let i = 0; i < PAGED_BUILDS; i++) {
    pagedIds.push((await builds.createBuild({projectId: b.projectId}, org)).buildId)
  }
  const pages = []
  let pageToken = undefined
  for (let guard = 0; guard < 10; guard++) {
    const page = await coreBuilds.listBuilds({projectId: b.projectId, pageSize: PAGE_SIZE, pageToken}, org)
    pages.push({
      buildIds: page.builds.map((x) => x.buildId),
      statuses: page.builds.map((x) => x.status),
      nextPageToken: page.nextPageToken,
    })
    if (!page.nextPageToken) break
    pageToken = page.nextPageToken
  }
  const unpaged = await coreBuilds.listBuilds({projectId: b.projectId}, org)
  out.paging = {
    createdIds: pagedIds,
    pageSize: PAGE_SIZE,
    pages,
    unpaged: {buildIds: unpaged.builds.map((x) => x.buildId), nextPageToken: unpaged.nextPageToken},
  }

  // --- Error paths -------------------------------------------------------------------------
  out.errors = {
    wrongToken: await failure('wrong token', () => projects.listProjects({}, auth('not-a-depot-token'))),
    noToken: await failure('no token', () => projects.listProjects({})),
    missingProject: await failure('missing project', () => projects.getProject({projectId: MISSING_ID}, org)),
    missingProjectBuild: await failure('build of a missing project', () =>
      builds.createBuild({projectId: MISSING_ID}, org),
    ),
    refinishDifferently: await failure('finish a finished build differently', () =>
      builds.finishBuild({buildId: ok.buildId, result: {case: 'error', value: {error: 'too late'}}}, okToken),
    ),
    buildTokenOtherBuild: await failure('build token, other build', () =>
      coreBuilds.getBuild({buildId: bad.buildId}, okToken),
    ),
    invalidRegion: await failure('invalid region', () =>
      projects.createProject({name: 'sdk-e2e-mars', regionId: 'mars-north-1'}, org),
    ),
    duplicateName: await failure('duplicate name', () =>
      projects.createProject({name: 'sdk-e2e-b', regionId: 'us-east-1'}, org),
    ),
  }

  // --- Deleting a project -----------------------------------------------------------------
  out.deleteA = setFields(await projects.deleteProject({projectId: a.projectId}, org))
  out.afterDelete = {
    projectIds: (await projects.listProjects({}, org)).projects.map((p) => p.projectId),
    getProject: await failure('get deleted project', () => projects.getProject({projectId: a.projectId}, org)),
    getBuild: await failure('get build of deleted project', () =>
      coreBuilds.getBuild({buildId: ok.buildId}, org),
    ),
    listBuilds: await failure('list builds of deleted project', () =>
      coreBuilds.listBuilds({projectId: a.projectId}, org),
    ),
  }

  out.rpcCount = rpcCount
  return out
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out, jsonSafe) + '\n')
  },
  (err) => {
    console.error(err?.stack ?? err)
    process.exitCode = 1
  },
)
