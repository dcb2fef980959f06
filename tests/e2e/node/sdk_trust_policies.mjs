// Drives trust policies with the official @depot/sdk-node client, and creates a build with a
// CI job's OIDC token as the Bearer (what the build API's CreateBuild takes from CI).
//
// Environment:
//   DEPOT_API_URL       where the server listens (read by the SDK itself when it is imported)
//   DEPOT_E2E_TOKEN     an organization token of a fresh organization (no projects yet)
//   DEPOT_E2E_OIDC      a GitHub Actions OIDC token of repository acme/app
//   DEPOT_E2E_CIRCLE_ORG, DEPOT_E2E_CIRCLE_PROJECT  CircleCI UUIDs for a policy
//
// Prints one JSON document on stdout describing what the server answered; any unexpected
// error exits non-zero with the error on stderr.

import {ConnectError} from '@connectrpc/connect'
import {depot} from '@depot/sdk-node'

const token = process.env.DEPOT_E2E_TOKEN
const oidc = process.env.DEPOT_E2E_OIDC
if (!process.env.DEPOT_API_URL || !token || !oidc) {
  console.error('sdk_trust_policies: set DEPOT_API_URL, DEPOT_E2E_TOKEN and DEPOT_E2E_OIDC')
  process.exit(2)
}
const projects = depot.core.v1.ProjectService
const builds = depot.build.v1.BuildService
const auth = (secret) => ({headers: {Authorization: `Bearer ${secret}`}})
const org = auth(token)

async function failure(label, call) {
  try {
    await call()
  } catch (err) {
    if (!(err instanceof ConnectError)) throw new Error(`${label}: ${err?.stack ?? err}`)
    return {code: err.code, message: err.rawMessage}
  }
  throw new Error(`${label}: expected an error, got a success`)
}

const policyOut = (p) => ({id: p.trustPolicyId, provider: p.provider.case, ...p.provider.value})

async function main() {
  const {project} = await projects.createProject({name: 'trusted', regionId: 'us-east-1'}, org)
  const projectId = project.projectId
  const added = []
  for (const provider of [
    {case: 'github', value: {repositoryOwner: 'acme', repository: 'app'}},
    {
      case: 'circleci',
      value: {
        organizationUuid: process.env.DEPOT_E2E_CIRCLE_ORG,
        projectUuid: process.env.DEPOT_E2E_CIRCLE_PROJECT,
      },
    },
    {case: 'buildkite', value: {organizationSlug: 'acme', pipelineSlug: 'deploy'}},
  ]) {
    const {trustPolicy} = await projects.addTrustPolicy({projectId, provider}, org)
    added.push(policyOut(trustPolicy))
  }
  const listed = (await projects.listTrustPolicies({projectId}, org)).trustPolicies.map(policyOut)

  // A CI job of acme/app creates a build with its OIDC token, then finishes it with the build
  // token it got back.
  const created = await builds.createBuild({projectId}, auth(oidc))
  await builds.finishBuild(
    {buildId: created.buildId, result: {case: 'success', value: {}}},
    auth(created.buildToken),
  )
  const oidcCannotList = await failure('listTrustPolicies with the OIDC token', () =>
    projects.listTrustPolicies({projectId}, auth(oidc)),
  )

  await projects.removeTrustPolicy({projectId, trustPolicyId: added[0].id}, org)
  const afterRemoval = (await projects.listTrustPolicies({projectId}, org)).trustPolicies.map(policyOut)
  const refusedAfterRemoval = await failure('createBuild after the policy is removed', () =>
    builds.createBuild({projectId}, auth(oidc)),
  )
  const removedTwice = await failure('removeTrustPolicy twice', () =>
    projects.removeTrustPolicy({projectId, trustPolicyId: added[0].id}, org),
  )
  const noProvider = await failure('addTrustPolicy without a provider', () =>
    projects.addTrustPolicy({projectId}, org),
  )

  console.log(
    JSON.stringify({
      projectId,
      added,
      listed,
      createdBuildId: created.buildId,
      oidcCannotList,
      afterRemoval,
      refusedAfterRemoval,
      removedTwice,
      noProvider,
    }),
  )
}

main().catch((err) => {
  console.error(err?.stack ?? err)
  process.exit(1)
})
