;; The vertical pass of web/js/mask-math.js's upsampling with its threshold: out[i][j] = 1 where
;; sum_t weight[i][t] * rows[index[i][t]][j] > 0, else 0. The products and sums are float64, in the order
;; mask-math.js's thresholdSpan computes them in JavaScript, so every bit agrees; four pixels a step in f64x2.
;; Regenerate mask-threshold-wasm.js after editing: node tests/web/wasm_kernels.mjs --write
(module
  (memory (export "memory") 1)

  ;; rows: byte offset of the horizontal pass's rows (float32, `width` a row); index: byte offset of `taps`
  ;; int32 source rows per output row; weight: byte offset of their float32 weights; out: byte offset of
  ;; height * width bytes. taps is 2 or 3.
  (func (export "thresholdRows") (param $rows i32) (param $index i32) (param $weight i32) (param $taps i32)
                                 (param $height i32) (param $width i32) (param $out i32)
    (local $i i32) (local $j i32) (local $k i32) (local $a i32) (local $b i32) (local $c i32) (local $o i32)
    (local $wa f64) (local $wb f64) (local $wc f64) (local $value f64)
    (local $va v128) (local $vb v128) (local $vc v128)
    (local $x v128) (local $y v128) (local $z v128) (local $low v128) (local $high v128)
    (local $end i32)
    (local.set $end (i32.and (local.get $width) (i32.const -4)))
    (local.set $i (i32.const 0))
    (block $rowsDone
      (loop $rowsLoop
        (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $height)))
        ;; k: this output row's first tap; a, b, c: byte offsets of its source rows.
        (local.set $k (i32.shl (i32.mul (local.get $i) (local.get $taps)) (i32.const 2)))
        (local.set $a (i32.add (local.get $rows) (i32.shl (i32.mul (i32.load (i32.add (local.get $index) (local.get $k)))
                                                                   (local.get $width)) (i32.const 2))))
        (local.set $b (i32.add (local.get $rows) (i32.shl (i32.mul (i32.load offset=4 (i32.add (local.get $index) (local.get $k)))
                                                                   (local.get $width)) (i32.const 2))))
        (local.set $wa (f64.promote_f32 (f32.load (i32.add (local.get $weight) (local.get $k)))))
        (local.set $wb (f64.promote_f32 (f32.load offset=4 (i32.add (local.get $weight) (local.get $k)))))
        (local.set $c (local.get $a))
        (local.set $wc (f64.const 0))
        (if (i32.eq (local.get $taps) (i32.const 3))
          (then
            (local.set $c (i32.add (local.get $rows) (i32.shl (i32.mul (i32.load offset=8 (i32.add (local.get $index) (local.get $k)))
                                                                       (local.get $width)) (i32.const 2))))
            (local.set $wc (f64.promote_f32 (f32.load offset=8 (i32.add (local.get $weight) (local.get $k)))))))
        (local.set $va (f64x2.splat (local.get $wa)))
        (local.set $vb (f64x2.splat (local.get $wb)))
        (local.set $vc (f64x2.splat (local.get $wc)))
        (local.set $o (i32.add (local.get $out) (i32.mul (local.get $i) (local.get $width))))
        (local.set $j (i32.const 0))
        (block $spanDone
          (loop $span
            (br_if $spanDone (i32.ge_u (local.get $j) (local.get $end)))
            (local.set $x (v128.load (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 2)))))
            (local.set $y (v128.load (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2)))))
            ;; Pixels j, j + 1: wa * x + wb * y (+ wc * z), as JavaScript adds them.
            (local.set $low
              (f64x2.add (f64x2.mul (local.get $va) (f64x2.promote_low_f32x4 (local.get $x)))
                         (f64x2.mul (local.get $vb) (f64x2.promote_low_f32x4 (local.get $y)))))
            ;; Pixels j + 2, j + 3 (the high half moved down first).
            (local.set $high
              (f64x2.add
                (f64x2.mul (local.get $va) (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7
                                                                                    (local.get $x) (local.get $x))))
                (f64x2.mul (local.get $vb) (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7
                                                                                    (local.get $y) (local.get $y))))))
            (if (i32.eq (local.get $taps) (i32.const 3))
              (then
                (local.set $z (v128.load (i32.add (local.get $c) (i32.shl (local.get $j) (i32.const 2)))))
                (local.set $low (f64x2.add (local.get $low) (f64x2.mul (local.get $vc) (f64x2.promote_low_f32x4 (local.get $z)))))
                (local.set $high
                  (f64x2.add (local.get $high)
                    (f64x2.mul (local.get $vc) (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7
                                                                                         (local.get $z) (local.get $z))))))))
            ;; The four comparisons (all-ones 64-bit lanes) to four bytes of 0 / 1.
            (v128.store32_lane 0 (i32.add (local.get $o) (local.get $j))
              (v128.and
                (i8x16.shuffle 0 8 16 24 0 0 0 0 0 0 0 0 0 0 0 0
                  (f64x2.gt (local.get $low) (f64x2.splat (f64.const 0)))
                  (f64x2.gt (local.get $high) (f64x2.splat (f64.const 0))))
                (v128.const i8x16 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0)))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $span)))
        ;; The last width % 4 pixels one at a time.
        (block $tailDone
          (loop $tail
            (br_if $tailDone (i32.ge_u (local.get $j) (local.get $width)))
            (local.set $value
              (f64.add (f64.mul (local.get $wa) (f64.promote_f32 (f32.load (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 2))))))
                       (f64.mul (local.get $wb) (f64.promote_f32 (f32.load (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2))))))))
            (if (i32.eq (local.get $taps) (i32.const 3))
              (then
                (local.set $value
                  (f64.add (local.get $value)
                    (f64.mul (local.get $wc) (f64.promote_f32 (f32.load (i32.add (local.get $c) (i32.shl (local.get $j) (i32.const 2))))))))))
            (i32.store8 (i32.add (local.get $o) (local.get $j)) (f64.gt (local.get $value) (f64.const 0)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $tail)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $rowsLoop))))
)
