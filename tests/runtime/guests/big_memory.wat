;; Asks for 300 pages (19.2 MiB) of memory at instantiation.
(module
  (memory (export "memory") 300)
  (func (export "_start")))
