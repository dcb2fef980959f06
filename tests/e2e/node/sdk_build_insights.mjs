// Reads the insights of builds with the official @depot/sdk-node client, as Depot's own UI
// would: every step of each build (GetBuildSteps, a page of 2 at a time), every log line of
// each step that has logs (GetBuildStepLogs, paged too), and the build's counters from
// depot.core.v1.BuildService/GetBuild.
//
// Environment:
//   DEPOT_API_URL         where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN       a token that may read the builds
//   DEPOT_E2E_PROJECT_ID  their project
//   DEPOT_E2E_BUILD_IDS   the builds, separated by commas
//
// Prints one JSON document: {"<build id>": {"steps": [...], "build": {...}}}. Any error exits
// non-zero with it on stderr.

import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
const projectId = process.env.DEPOT_E2E_PROJECT_ID
const buildIds = (process.env.DEPOT_E2E_BUILD_IDS ?? '').split(',').filter(Boolean)
if (!process.env.DEPOT_API_URL || !token || !projectId || !buildIds.length) {
  console.error(
    'sdk_build_insights: set DEPOT_API_URL, DEPOT_E2E_TOKEN, DEPOT_E2E_PROJECT_ID and DEPOT_E2E_BUILD_IDS',
  )
  process.exit(2)
}
const auth = {headers: {Authorization: `Bearer ${token}`}}
const time = (t) => (t ? Number(t.seconds) + t.nanos / 1e9 : null)

async function steps(buildId) {
  const found = []
  let pageToken
  do {
    const page = await depot.build.v1.BuildService.getBuildSteps(
      {projectId, buildId, pageSize: 2, pageToken},
      auth,
    )
    for (const step of page.buildSteps) {
      found.push({
        name: step.name,
        digest: step.digest,
        startedAt: time(step.startedAt),
        completedAt: time(step.completedAt),
        cacheState: step.cacheState,
        error: step.error ?? null,
        hasLogs: step.hasLogs,
        logs: step.hasLogs ? await logs(buildId, step.digest) : [],
      })
    }
    pageToken = page.nextPageToken
  } while (pageToken)
  return found
}

async function logs(buildId, buildStepDigest) {
  const lines = []
  let pageToken
  do {
    const page = await depot.build.v1.BuildService.getBuildStepLogs(
      {projectId, buildId, buildStepDigest, pageSize: 50, pageToken},
      auth,
    )
    lines.push(...page.logs.map((log) => log.message))
    pageToken = page.nextPageToken
  } while (pageToken)
  return lines
}

const out = {}
for (const buildId of buildIds) {
  const {build} = await depot.core.v1.BuildService.getBuild({buildId}, auth)
  out[buildId] = {
    steps: await steps(buildId),
    build: {
      buildDurationSeconds: build.buildDurationSeconds ?? null,
      savedDurationSeconds: build.savedDurationSeconds ?? null,
      cachedSteps: build.cachedSteps ?? null,
      totalSteps: build.totalSteps ?? null,
    },
  }
}
console.log(JSON.stringify(out))
