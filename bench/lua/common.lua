-- Shared by the wrk scripts: Connect JSON over HTTP/1.1, the token from the environment, and
-- a JSON summary line at the end (requests, errors, p50/p99 in microseconds).
local common = {}
local threads = {}

function common.setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function common.init()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
end

function common.done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "errors": %d, "seconds": %f, "p50_us": %f, "p99_us": %f}\n',
    summary.requests, errors, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end

return common
