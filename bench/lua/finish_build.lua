-- FinishBuild of a different running build each time (their IDs, one per line, in a file):
-- thread k of n takes IDs k, k+n, k+2n, ...
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")
local ids = {}
local next_index

setup = common.setup
done = common.done

function init(args)
  common.init()
  for line in io.lines(os.getenv("BENCH_BUILD_IDS")) do
    table.insert(ids, line)
  end
  step = tonumber(os.getenv("BENCH_THREADS"))
  next_index = thread_index + 1
end

function request()
  local id = ids[next_index]
  if id == nil then
    error("bench: ran out of running builds to finish; seed more")
  end
  next_index = next_index + step
  return wrk.format(nil, nil, nil, '{"buildId":"' .. id .. '","success":{}}')
end
