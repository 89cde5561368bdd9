-- Forget the queued retained status once the broker acknowledged it, unless a newer one was queued.
-- KEYS[1] restaurant hash; ARGV[1] outbox field; ARGV[2] the status that was published.
-- A script rather than WATCH/MULTI: heartbeats write the same hash all the time, so a watch would
-- abort nearly every time under load.
if redis.call("HGET", KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call("HDEL", KEYS[1], ARGV[1])
end
return 0
