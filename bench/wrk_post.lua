-- wrk script for bench/http.py: POST one body file with headers, print a JSON summary.
-- usage: wrk ... -s bench/wrk_post.lua URL -- BODY_FILE CONTENT_TYPE TOKEN [X-Activations value]
local request_bytes

init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  local headers = {["Content-Type"] = args[2], ["Authorization"] = "Bearer " .. args[3]}
  if args[4] and args[4] ~= "" then headers["X-Activations"] = args[4] end
  request_bytes = wrk.format("POST", nil, headers, body)
end

request = function()
  return request_bytes
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
