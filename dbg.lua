function done(summary, latency, requests)
  print(type(latency.min), latency.min, type(latency.max), latency.max, #latency)
  print(type(latency[1]), latency[1], type(latency[latency.min+1]), latency[latency.min+1])
end
