;; Never returns: only the epoch deadline (or fuel) can stop it.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
