// Shares a build, or stops sharing it, with the official @depot/sdk-node client
// (depot.core.v1.BuildService ShareBuild / StopSharingBuild).
//
// Environment:
//   DEPOT_API_URL         where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN       a token that may read the build
//   DEPOT_E2E_BUILD_ID    the build
//   DEPOT_E2E_ACTION      "share" (ShareBuild twice) or "stop" (StopSharingBuild)
//
// Prints one JSON document: {"shareUrl": ..., "again": ...} for share, {"stopped": {}} for stop.
// Any error exits non-zero with it on stderr.

import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
const buildId = process.env.DEPOT_E2E_BUILD_ID
const action = process.env.DEPOT_E2E_ACTION
if (!process.env.DEPOT_API_URL || !token || !buildId || !['share', 'stop'].includes(action)) {
  console.error('sdk_share: set DEPOT_API_URL, DEPOT_E2E_TOKEN, DEPOT_E2E_BUILD_ID, DEPOT_E2E_ACTION')
  process.exit(2)
}
const auth = {headers: {Authorization: `Bearer ${token}`}}
const service = depot.core.v1.BuildService

if (action === 'share') {
  const first = await service.shareBuild({buildId}, auth)
  const again = await service.shareBuild({buildId}, auth)
  console.log(JSON.stringify({shareUrl: first.shareUrl, again: again.shareUrl}))
} else {
  const stopped = await service.stopSharingBuild({buildId}, auth)
  console.log(JSON.stringify({stopped}))
}
