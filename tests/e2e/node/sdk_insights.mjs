// Reads build insights with the official @depot/sdk-node client: for each build named, every
// step (GetBuildSteps, paged), the log lines of each step that has logs (GetBuildStepLogs,
// paged) and the build's counters (depot.core.v1 GetBuild).
//
// Environment:
//   DEPOT_API_URL     where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN   a token that may read the builds
//   DEPOT_E2E_BUILDS  JSON: [{"projectId": "...", "buildId": "..."}, ...]
//
// Prints one JSON document on stdout (timestamps as RFC 3339 strings); any error exits
// non-zero with the error on stderr.

import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
const wanted = JSON.parse(process.env.DEPOT_E2E_BUILDS ?? '[]')
const auth = {headers: {Authorization: `Bearer ${token}`}}
const PAGE = 3

const time = (t) => (t ? t.toDate().toISOString() : null)

async function steps(projectId, buildId) {
  const all = []
  let pageToken
  do {
    const page = await depot.build.v1.BuildService.getBuildSteps(
      {projectId, buildId, pageSize: PAGE, pageToken},
      auth,
    )
    all.push(...page.buildSteps)
    pageToken = page.nextPageToken
  } while (pageToken)
  return all
}

async function lines(projectId, buildId, buildStepDigest) {
  const all = []
  let pageToken
  do {
    const page = await depot.build.v1.BuildService.getBuildStepLogs(
      {projectId, buildId, buildStepDigest, pageSize: PAGE, pageToken},
      auth,
    )
    all.push(...page.logs.map((l) => ({message: l.message, timestamp: time(l.timestamp)})))
    pageToken = page.nextPageToken
  } while (pageToken)
  return all
}

const out = []
for (const {projectId, buildId} of wanted) {
  const found = []
  for (const s of await steps(projectId, buildId)) {
    found.push({
      name: s.name,
      digest: s.digest,
      startedAt: time(s.startedAt),
      completedAt: time(s.completedAt),
      cacheState: s.cacheState,
      error: s.error ?? null,
      hasLogs: s.hasLogs,
      logs: s.hasLogs ? await lines(projectId, buildId, s.digest) : [],
    })
  }
  const {build} = await depot.core.v1.BuildService.getBuild({buildId}, auth)
  out.push({
    buildId,
    steps: found,
    build: {
      totalSteps: build.totalSteps ?? null,
      cachedSteps: build.cachedSteps ?? null,
      savedDurationSeconds: build.savedDurationSeconds ?? null,
    },
  })
}
console.log(JSON.stringify(out))
