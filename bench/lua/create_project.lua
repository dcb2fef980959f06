-- CreateProject with a name no other request uses (a repeated name is already_exists).
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")
local counter = 0

setup = common.setup
done = common.done

function init(args)
  common.init()
  prefix = os.getenv("BENCH_PREFIX") .. "-" .. thread_index .. "-"
end

function request()
  counter = counter + 1
  local body = '{"name":"' .. prefix .. counter .. '","regionId":"us-east-1"}'
  return wrk.format(nil, nil, nil, body)
end
