;; Paints a binary mask into packed RGBA pixels: `fill` inside, `edge` on its outline (a set pixel on the image's
;; border or with an unset 4-neighbour); unset pixels keep what the target holds. The same pixels as
;; web/js/mask-paint.js paintMaskJs, 16 pixels per step with WebAssembly SIMD.
;; Regenerate mask-paint-wasm.js after editing: node tests/web/wasm_kernels.mjs --write (a test checks it is current).
(module
  (memory (export "memory") 1)

  ;; One pixel (x, y): i = y * width + x.
  (func $pixel (param $target i32) (param $mask i32) (param $width i32) (param $height i32)
               (param $x i32) (param $y i32) (param $fill i32) (param $edge i32)
    (local $i i32) (local $onEdge i32)
    (local.set $i (i32.add (i32.mul (local.get $y) (local.get $width)) (local.get $x)))
    (if (i32.eqz (i32.load8_u (i32.add (local.get $mask) (local.get $i)))) (then (return)))
    (local.set $onEdge
      (i32.or
        (i32.or (i32.eqz (local.get $x)) (i32.eq (local.get $x) (i32.sub (local.get $width) (i32.const 1))))
        (i32.or (i32.eqz (local.get $y)) (i32.eq (local.get $y) (i32.sub (local.get $height) (i32.const 1))))))
    ;; Neighbours are read only off the border (they would lie outside the mask there).
    (if (i32.eqz (local.get $onEdge))
      (then
        (local.set $onEdge
          (i32.or
            (i32.or
              (i32.eqz (i32.load8_u (i32.add (local.get $mask) (i32.sub (local.get $i) (i32.const 1)))))
              (i32.eqz (i32.load8_u (i32.add (local.get $mask) (i32.add (local.get $i) (i32.const 1))))))
            (i32.or
              (i32.eqz (i32.load8_u (i32.add (local.get $mask) (i32.sub (local.get $i) (local.get $width)))))
              (i32.eqz (i32.load8_u (i32.add (local.get $mask) (i32.add (local.get $i) (local.get $width))))))))))
    (i32.store (i32.add (local.get $target) (i32.shl (local.get $i) (i32.const 2)))
      (select (local.get $edge) (local.get $fill) (local.get $onEdge))))

  ;; Four pixels from byte i of the target: `colour` where `set` (all ones per pixel), else as they are.
  (func $four (param $address i32) (param $set v128) (param $colour v128)
    (v128.store (local.get $address)
      (v128.bitselect (local.get $colour) (v128.load (local.get $address)) (local.get $set))))

  ;; target: byte offset of width * height u32 pixels; mask: byte offset of width * height bytes (0: unset).
  (func (export "paint") (param $target i32) (param $mask i32) (param $width i32) (param $height i32)
                         (param $fill i32) (param $edge i32)
    (local $x i32) (local $y i32) (local $i i32) (local $last i32) (local $at i32)
    (local $set v128) (local $inner v128) (local $zero v128) (local $fills v128) (local $edges v128)
    (local $setHalf v128) (local $innerHalf v128)
    (local.set $zero (v128.const i32x4 0 0 0 0))
    (local.set $fills (i32x4.splat (local.get $fill)))
    (local.set $edges (i32x4.splat (local.get $edge)))
    (local.set $y (i32.const 0))
    (block $rowsDone
      (loop $rows
        (br_if $rowsDone (i32.ge_u (local.get $y) (local.get $height)))
        (local.set $x (i32.const 0))
        ;; Interior rows of images at least 18 wide: x = 0, then 16 at a time while x + 16 <= width - 1.
        (if (i32.and
              (i32.and (i32.gt_u (local.get $y) (i32.const 0))
                       (i32.lt_u (local.get $y) (i32.sub (local.get $height) (i32.const 1))))
              (i32.ge_u (local.get $width) (i32.const 18)))
          (then
            (call $pixel (local.get $target) (local.get $mask) (local.get $width) (local.get $height)
                         (i32.const 0) (local.get $y) (local.get $fill) (local.get $edge))
            (local.set $x (i32.const 1))
            (local.set $last (i32.sub (local.get $width) (i32.const 17)))
            (block $spansDone
              (loop $spans
                (br_if $spansDone (i32.gt_u (local.get $x) (local.get $last)))
                (local.set $i (i32.add (i32.mul (local.get $y) (local.get $width)) (local.get $x)))
                (local.set $at (i32.add (local.get $mask) (local.get $i)))
                (local.set $set (i8x16.ne (v128.load (local.get $at)) (local.get $zero)))
                (if (v128.any_true (local.get $set))
                  (then
                    (local.set $inner
                      (v128.and
                        (v128.and
                          (i8x16.ne (v128.load (i32.sub (local.get $at) (i32.const 1))) (local.get $zero))
                          (i8x16.ne (v128.load (i32.add (local.get $at) (i32.const 1))) (local.get $zero)))
                        (v128.and
                          (i8x16.ne (v128.load (i32.sub (local.get $at) (local.get $width))) (local.get $zero))
                          (i8x16.ne (v128.load (i32.add (local.get $at) (local.get $width))) (local.get $zero)))))
                    (local.set $at (i32.add (local.get $target) (i32.shl (local.get $i) (i32.const 2))))
                    ;; Bytes to 32-bit lanes: sign extension keeps 0xff as all ones.
                    (local.set $setHalf (i16x8.extend_low_i8x16_s (local.get $set)))
                    (local.set $innerHalf (i16x8.extend_low_i8x16_s (local.get $inner)))
                    (call $four (local.get $at) (i32x4.extend_low_i16x8_s (local.get $setHalf))
                      (v128.bitselect (local.get $fills) (local.get $edges)
                                      (i32x4.extend_low_i16x8_s (local.get $innerHalf))))
                    (call $four (i32.add (local.get $at) (i32.const 16)) (i32x4.extend_high_i16x8_s (local.get $setHalf))
                      (v128.bitselect (local.get $fills) (local.get $edges)
                                      (i32x4.extend_high_i16x8_s (local.get $innerHalf))))
                    (local.set $setHalf (i16x8.extend_high_i8x16_s (local.get $set)))
                    (local.set $innerHalf (i16x8.extend_high_i8x16_s (local.get $inner)))
                    (call $four (i32.add (local.get $at) (i32.const 32)) (i32x4.extend_low_i16x8_s (local.get $setHalf))
                      (v128.bitselect (local.get $fills) (local.get $edges)
                                      (i32x4.extend_low_i16x8_s (local.get $innerHalf))))
                    (call $four (i32.add (local.get $at) (i32.const 48)) (i32x4.extend_high_i16x8_s (local.get $setHalf))
                      (v128.bitselect (local.get $fills) (local.get $edges)
                                      (i32x4.extend_high_i16x8_s (local.get $innerHalf))))))
                (local.set $x (i32.add (local.get $x) (i32.const 16)))
                (br $spans)))))
        ;; The rest of the row one pixel at a time (all of it on the first and last rows).
        (block $pixelsDone
          (loop $pixels
            (br_if $pixelsDone (i32.ge_u (local.get $x) (local.get $width)))
            (call $pixel (local.get $target) (local.get $mask) (local.get $width) (local.get $height)
                         (local.get $x) (local.get $y) (local.get $fill) (local.get $edge))
            (local.set $x (i32.add (local.get $x) (i32.const 1)))
            (br $pixels)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $rows))))
)
