;; Forwards WASI's fd_write as an export p_fd_write, so tests can write any fd with any iovecs and result
;; pointer from Python. 1 page (64 KiB) of memory.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "p_fd_write") (param $fd i32) (param $iovs i32) (param $count i32) (param $nwritten i32) (result i32)
    (call $fd_write (local.get $fd) (local.get $iovs) (local.get $count) (local.get $nwritten)))
)
