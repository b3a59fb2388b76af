;; Traps while it is being instantiated (its start function), before any request could run it.
(module
  (memory (export "memory") 1)
  (func $boom unreachable)
  (start $boom)
  (func (export "_start")))
