/*
 * fcvm bare-metal x86_64 test guest.
 *
 * Why this exists: the CI/dev hosts run KVM as PVM (software virtualization),
 * where Linux guests do not boot and guest ring-0 code runs at roughly one
 * million instructions per second.  The end-to-end tests still need a guest
 * whose memory contents are known, that keeps reading and writing memory after
 * a snapshot restore, and that says loudly on the serial console whether every
 * page it looked at still holds what it should.  This is that guest.
 *
 * Boot protocol (see README.md for the whole contract):
 *   Firecracker loads this ELF (no PVH note) and enters _start in 64-bit long
 *   mode with the low 1 GiB identity-mapped (2 MiB pages, tables at
 *   0x9000-0xbfff), interrupts off, rsi = 0x7000 = Linux boot_params ("zero
 *   page") carrying the e820 map and a pointer to the kernel command line.
 *
 * Cost model: every instruction matters under PVM, so the inner loops touch
 * only one or two 64-bit words per 4 KiB page and use patterns that can be
 * advanced with a single add from one page to the next.
 *
 * Register convention inside this file: routines may clobber rax, rcx, rdx,
 * rsi, rdi, r8-r11; rbx, rbp, r12-r15 are preserved (System V style).
 */

        .set COM1_THR,          0x3f8
        .set COM1_LSR,          0x3fd
        .set LSR_THRE,          0x20

        /* Linux boot_params (zero page) offsets, arch/x86/include/uapi/asm/bootparam.h */
        .set BP_E820_ENTRIES,   0x1e8           /* u8  */
        .set BP_HDR_MAGIC,      0x202           /* u32 "HdrS" */
        .set BP_CMD_LINE_PTR,   0x228           /* u32 */
        .set BP_E820_TABLE,     0x2d0           /* 20-byte entries */
        .set E820_MAX,          128
        .set E820_RAM,          1
        .set HDRS_MAGIC,        0x53726448

        /* Guest physical layout. */
        .set AREA_BASE,         0x1000000       /* READ area starts at 16 MiB */
        .set IDMAP_LIMIT,       0x40000000      /* Firecracker maps only the low 1 GiB */
        .set PAGE,              4096
        .set LAST_WORD,         PAGE - 8

        /*
         * Patterns.  pattern(a) = a*K + SEED (mod 2^64).  K is odd, so a*K is
         * a bijection on 64-bit values: a page that shows up at the wrong
         * address, a stale page or a zero page can never look right.  Being
         * linear, the next page's value is one add away.
         */
        .set K,                 0x9E3779B97F4A7C15
        .set READ_SEED,         0x46434D5652454144      /* "FCVMREAD" */
        .set WRITE_SEED,        0x46434D5657524954      /* "FCVMWRIT" */

        /*
         * Defaults, chosen for a 128 MiB VM (16 + 32 + 8 = 56 MiB used) and
         * for PVM, where a page costs about 10 us to check or write: ~100 ms
         * of work per 250 ms tick, so a few ticks a second with the vCPU idle
         * more than half the time.
         */
        .set DEF_READ_MIB,      32
        .set DEF_WRITE_MIB,     8
        .set DEF_TICK_MS,       250
        .set FALLBACK_TSC_KHZ,  2000000         /* used only without kvmclock/CPUID info */

        /* KVM paravirt clock and x2APIC timer. */
        .set MSR_KVM_SYSTEM_TIME,       0x12
        .set MSR_KVM_SYSTEM_TIME_NEW,   0x4b564d01
        .set MSR_APIC_BASE,             0x1b
        .set X2APIC_EOI,                0x80b
        .set X2APIC_SVR,                0x80f
        .set X2APIC_LVT_TIMER,          0x832
        .set X2APIC_LVT_LINT0,          0x835
        .set X2APIC_TMICT,              0x838
        .set X2APIC_TDCR,               0x83e
        .set TIMER_VECTOR,              0x40
        .set SPURIOUS_VECTOR,           0xff
        /* KVM's APIC timer counts at 1 GHz (APIC_BUS_CYCLE_NS = 1): ~10 ms. */
        .set TIMER_PERIOD_COUNT,        10000000

        .set KERNEL_CS,         0x08
        .set KERNEL_DS,         0x10

/* ------------------------------------------------------------------------ */
        .section .text.entry, "ax"
        .code64
        .globl _start
_start:
        cli
        cld
        /* Firecracker's stack (0x8ff0) sits just under its page tables; use our own. */
        lea     stack_top(%rip), %rsp
        mov     %rsi, boot_params(%rip)

        /*
         * Firecracker leaves KVM's reset CR0 bits CD and NW set (CR0 reads
         * 0xe0000011).  On hardware KVM that can mean uncached guest memory;
         * a real kernel clears them early, so do we.
         */
        mov     %cr0, %rax
        btr     $30, %rax               /* CD */
        btr     $29, %rax               /* NW */
        mov     %rax, %cr0

        /*
         * Firecracker's GDT/IDT live in low guest memory (0x500/0x520) and its
         * IDT is a single null entry, so any exception would triple-fault the
         * VM silently.  Install our own so faults get reported on the console.
         */
        lgdt    gdt_desc(%rip)
        pushq   $KERNEL_CS
        lea     1f(%rip), %rax
        push    %rax
        lretq
1:      mov     $KERNEL_DS, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        call    idt_init
        lidt    idt_desc(%rip)

        /* Mask the legacy PIC: its unprogrammed vector base would alias exceptions. */
        mov     $0xff, %al
        out     %al, $0x21
        out     %al, $0xa1

        lea     msg_boot(%rip), %rdi
        call    puts

        call    read_e820
        call    parse_cmdline
        call    layout_areas
        call    clock_init
        call    timer_init

        call    fill_areas

        call    print_ready

/*
 * Main loop.  All state that must survive snapshot/restore (tick counter,
 * sizes) lives in guest memory, so a restored clone just carries on.
 */
main_loop:
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %r12              /* tick start, for pacing and us= */

        movq    $0, bad_count(%rip)
        call    verify_read
        call    verify_and_write

        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        sub     %r12, %rax
        mov     $1000, %ecx
        mul     %rcx                    /* rdx:rax = delta * 1000 */
        divq    tsc_per_ms(%rip)        /* no overflow: tsc_per_ms >= 1000 */
        mov     %rax, %r13              /* work time in microseconds */

        incq    tick(%rip)
        call    print_tick

        call    wait_tick
        jmp     main_loop

/* ------------------------------------------------------------------------ */
/* Boot-time discovery                                                       */

/*
 * Find the size of RAM from the e820 map Firecracker writes into
 * boot_params: mem_total = sum of the RAM ranges (reported as mem=, rounded
 * up to MiB, which gives back mem_size_mib: only the 384 KiB legacy hole
 * below 1 MiB is missing), usable_end = end of the RAM range that contains
 * AREA_BASE, capped at the identity-mapped 1 GiB (the areas must live there).
 * Guests over 3 GiB have RAM above the 32-bit MMIO gap; it counts in mem=
 * but is not used.
 */
read_e820:
        mov     boot_params(%rip), %rsi
        cmpl    $HDRS_MAGIC, BP_HDR_MAGIC(%rsi)
        jne     err_no_bootparams
        movzbl  BP_E820_ENTRIES(%rsi), %ecx
        cmp     $E820_MAX, %ecx
        jbe     1f
        mov     $E820_MAX, %ecx
1:      lea     BP_E820_TABLE(%rsi), %rdi
        xor     %r8d, %r8d              /* mem_total */
        xor     %r9d, %r9d              /* usable_end */
        mov     $AREA_BASE, %r10d
        test    %ecx, %ecx
        jz      4f
2:      cmpl    $E820_RAM, 16(%rdi)
        jne     3f
        mov     (%rdi), %rax            /* start */
        mov     8(%rdi), %rdx
        add     %rdx, %r8
        add     %rax, %rdx              /* end */
        cmp     %r10, %rax
        ja      3f
        cmp     %r10, %rdx
        jbe     3f
        mov     %rdx, %r9
3:      add     $20, %rdi
        dec     %ecx
        jnz     2b
4:      mov     %r8, mem_total(%rip)
        mov     $IDMAP_LIMIT, %eax
        cmp     %rax, %r9
        cmova   %rax, %r9
        mov     %r9, usable_end(%rip)
        test    %r9, %r9
        jz      err_no_ram
        ret

/*
 * Parse "fcvm.<name>=<decimal>" tokens from the kernel command line
 * (boot_args).  Unknown "fcvm.*" tokens and malformed numbers are fatal so a
 * typo in a test cannot silently fall back to defaults; anything else
 * (console=..., tokens Firecracker appends) is ignored.
 */
parse_cmdline:
        push    %rbx
        push    %r12
        mov     boot_params(%rip), %rax
        mov     BP_CMD_LINE_PTR(%rax), %ebx     /* zero-extends */
        test    %ebx, %ebx
        jz      .Lpc_done
.Lpc_skip_spaces:
        movzbl  (%rbx), %eax
        test    %al, %al
        jz      .Lpc_done
        cmp     $' ', %al
        ja      .Lpc_token
        inc     %rbx
        jmp     .Lpc_skip_spaces
.Lpc_token:
        lea     opt_table(%rip), %r12
.Lpc_try_opt:
        mov     (%r12), %rdi
        test    %rdi, %rdi
        jz      .Lpc_no_match
        mov     %rbx, %rsi
        call    prefix_match            /* rax = end of prefix in token, or 0 */
        test    %rax, %rax
        jnz     .Lpc_matched
        add     $16, %r12
        jmp     .Lpc_try_opt
.Lpc_matched:
        mov     %rax, %rsi
        call    parse_decimal           /* rax = value, rdx = 1 if ok */
        test    %rdx, %rdx
        jz      err_bad_option
        mov     8(%r12), %rdi
        mov     %rax, (%rdi)
        jmp     .Lpc_skip_token
.Lpc_no_match:
        lea     opt_prefix(%rip), %rdi
        mov     %rbx, %rsi
        call    prefix_match
        test    %rax, %rax
        jnz     err_bad_option          /* an fcvm.* option we do not know */
.Lpc_skip_token:
        movzbl  (%rbx), %eax
        cmp     $' ', %al
        jbe     .Lpc_skip_spaces        /* space, control char or NUL */
        inc     %rbx
        jmp     .Lpc_skip_token
.Lpc_done:
        pop     %r12
        pop     %rbx
        ret

/* rdi = NUL-terminated prefix, rsi = text; returns rax = rsi past prefix, or 0. */
prefix_match:
1:      movzbl  (%rdi), %eax
        test    %al, %al
        jz      2f
        cmp     (%rsi), %al
        jne     3f
        inc     %rdi
        inc     %rsi
        jmp     1b
2:      mov     %rsi, %rax
        ret
3:      xor     %eax, %eax
        ret

/*
 * rsi = digits; returns rax = value, rdx = 1 when 1..9 digits are followed by
 * a separator (space/control/NUL), else rdx = 0.  Nine digits cannot overflow.
 */
parse_decimal:
        xor     %eax, %eax
        xor     %ecx, %ecx
1:      movzbl  (%rsi), %edx
        sub     $'0', %edx
        cmp     $9, %edx
        ja      2f
        imul    $10, %rax, %rax
        add     %rdx, %rax
        inc     %rsi
        inc     %ecx
        cmp     $9, %ecx
        ja      3f
        jmp     1b
2:      test    %ecx, %ecx
        jz      3f
        cmpb    $' ', (%rsi)
        ja      3f
        mov     $1, %edx
        ret
3:      xor     %edx, %edx
        ret

/* READ area at AREA_BASE, WRITE area right after it; both must fit in usable RAM. */
layout_areas:
        mov     $AREA_BASE, %eax
        mov     %rax, read_base(%rip)
        mov     read_mib(%rip), %rdx
        shl     $20, %rdx
        add     %rdx, %rax
        mov     %rax, read_end(%rip)
        mov     %rax, write_base(%rip)
        mov     write_mib(%rip), %rdx
        shl     $20, %rdx
        add     %rdx, %rax
        mov     %rax, write_end(%rip)
        cmp     usable_end(%rip), %rax
        ja      err_no_fit
        ret

/*
 * TSC frequency, for pacing ticks by wall-clock time (so the guest ticks a
 * few times a second both under PVM and on hardware KVM, instead of as fast
 * as the CPU allows).  Preferred source: one read of the KVM paravirt clock
 * (kvmclock), whose tsc_to_system_mul/tsc_shift give ns per TSC tick
 * exactly.  kvmclock stays registered afterwards, as with a Linux guest:
 * Firecracker calls KVM_KVMCLOCK_CTRL on every pause and logs a warning when
 * the guest has no kvmclock.  KVM may rewrite that page (it is alone in its
 * page of .bss) at any time.  Fallbacks: CPUID leaf 0x16 (base MHz), then a
 * fixed guess.
 */
clock_init:
        push    %rbx
        mov     $0x40000000, %eax
        xor     %ecx, %ecx
        cpuid
        cmp     $0x4b4d564b, %ebx       /* "KVMKVMKVM\0\0\0" */
        jne     .Lci_cpuid
        cmp     $0x564b4d56, %ecx
        jne     .Lci_cpuid
        cmp     $0x4d, %edx
        jne     .Lci_cpuid
        cmp     $0x40000001, %eax
        jb      .Lci_cpuid
        mov     $0x40000001, %eax
        xor     %ecx, %ecx
        cpuid
        mov     $MSR_KVM_SYSTEM_TIME_NEW, %ecx
        test    $(1 << 3), %eax         /* KVM_FEATURE_CLOCKSOURCE2 */
        jnz     1f
        mov     $MSR_KVM_SYSTEM_TIME, %ecx
        test    $(1 << 0), %eax         /* KVM_FEATURE_CLOCKSOURCE */
        jz      .Lci_cpuid
1:      lea     pvclock(%rip), %rax
        or      $1, %eax                /* enable bit; pvclock is below 4 GiB */
        xor     %edx, %edx
        wrmsr
        movsbl  pvclock+28(%rip), %edi  /* tsc_shift */
        mov     pvclock+24(%rip), %ecx  /* tsc_to_system_mul */
        test    %ecx, %ecx
        jz      .Lci_cpuid
        /*
         * ns = ((tsc << shift) * mul) >> 32 (shift may be negative), so
         * TSC ticks per ms = ((1e6 << 32) / mul) >> shift.
         */
        mov     $(1000000 << 32), %rax
        xor     %edx, %edx
        div     %rcx
        mov     %edi, %ecx
        test    %ecx, %ecx
        js      2f
        shr     %cl, %rax
        jmp     3f
2:      neg     %ecx
        shl     %cl, %rax
3:      lea     clk_kvmclock(%rip), %rdx
        jmp     .Lci_store
.Lci_cpuid:
        xor     %eax, %eax
        cpuid
        cmp     $0x16, %eax
        jb      .Lci_guess
        mov     $0x16, %eax
        xor     %ecx, %ecx
        cpuid
        and     $0xffff, %eax           /* base frequency, MHz */
        jz      .Lci_guess
        imul    $1000, %rax, %rax
        lea     clk_cpuid(%rip), %rdx
        jmp     .Lci_store
.Lci_guess:
        mov     $FALLBACK_TSC_KHZ, %eax
        lea     clk_guess(%rip), %rdx
.Lci_store:
        cmp     $1000, %rax             /* keeps the us= division from overflowing */
        jae     4f
        mov     $1000, %eax
4:      mov     %rax, tsc_per_ms(%rip)
        mov     %rdx, clock_name(%rip)
        imulq   tick_ms(%rip), %rax
        mov     %rax, tick_tsc(%rip)
        pop     %rbx
        ret

/*
 * A periodic x2APIC timer only exists so that the pacing wait can sleep in
 * hlt instead of spinning: with a handful of clones on a 2-CPU host, spinning
 * guests would starve each other.  Periodic mode (rather than TSC-deadline)
 * because the LAPIC registers are part of the vCPU state every snapshot
 * carries, so a restored guest keeps getting woken.  x2APIC (MSRs) because
 * the xAPIC MMIO page at 0xfee00000 is outside the identity-mapped 1 GiB.
 * The timer's exact rate does not matter: pacing is done with the TSC.
 */
timer_init:
        push    %rbx
        mov     $1, %eax
        xor     %ecx, %ecx
        cpuid
        bt      $21, %ecx               /* x2APIC */
        jnc     1f
        mov     $MSR_APIC_BASE, %ecx
        rdmsr
        or      $0xc00, %eax            /* global enable + x2APIC mode */
        wrmsr
        mov     $X2APIC_SVR, %ecx
        mov     $(0x100 | SPURIOUS_VECTOR), %eax
        xor     %edx, %edx
        wrmsr
        mov     $X2APIC_LVT_LINT0, %ecx
        mov     $(1 << 16), %eax        /* masked: no ExtINT from the PIC */
        wrmsr
        mov     $X2APIC_TDCR, %ecx
        mov     $0xb, %eax              /* divide by 1 */
        wrmsr
        mov     $X2APIC_LVT_TIMER, %ecx
        mov     $((1 << 17) | TIMER_VECTOR), %eax       /* periodic */
        wrmsr
        mov     $X2APIC_TMICT, %ecx
        mov     $TIMER_PERIOD_COUNT, %eax
        wrmsr
        movq    $1, timer_ok(%rip)
        lea     tmr_x2apic(%rip), %rax
        mov     %rax, timer_name(%rip)
1:      pop     %rbx
        ret

/* ------------------------------------------------------------------------ */
/* Memory areas                                                             */

/*
 * READ area: words at offset 0 and LAST_WORD of every page get pattern(gpa).
 * WRITE area: word 0 of every page gets pattern_w(gpa, 0) and from then on
 * pattern_w(gpa, tick) = gpa*K + WRITE_SEED + tick.
 */
fill_areas:
        mov     read_base(%rip), %rdi
        mov     read_end(%rip), %rsi
        mov     %rdi, %rax
        mov     $K, %r9
        imul    %r9, %rax
        mov     $READ_SEED, %rdx
        add     %rdx, %rax              /* pattern(read_base) */
        mov     %r9, %r8
        imul    $LAST_WORD, %r8, %r8    /* pattern(a + LAST_WORD) - pattern(a) */
        imul    $PAGE, %r9, %r9         /* pattern(a + PAGE) - pattern(a) */
        cmp     %rsi, %rdi
        jae     2f
1:      mov     %rax, (%rdi)
        lea     (%rax,%r8), %rdx
        mov     %rdx, LAST_WORD(%rdi)
        add     %r9, %rax
        add     $PAGE, %rdi
        cmp     %rsi, %rdi
        jb      1b
2:      mov     write_base(%rip), %rdi
        mov     write_end(%rip), %rsi
        mov     %rdi, %rax
        mov     $K, %rdx
        imul    %rdx, %rax
        mov     $WRITE_SEED, %rdx
        add     %rdx, %rax              /* pattern_w(write_base, 0) */
        cmp     %rsi, %rdi
        jae     4f
3:      mov     %rax, (%rdi)
        add     %r9, %rax
        add     $PAGE, %rdi
        cmp     %rsi, %rdi
        jb      3b
4:      ret

/* Check both words of every READ page.  8 instructions per page when good. */
verify_read:
        mov     read_base(%rip), %rdi
        mov     read_end(%rip), %rsi
        cmp     %rsi, %rdi
        jae     9f
        mov     %rdi, %rax
        mov     $K, %r9
        imul    %r9, %rax
        mov     $READ_SEED, %rdx
        add     %rdx, %rax
        mov     %r9, %r8
        imul    $LAST_WORD, %r8, %r8
        imul    $PAGE, %r9, %r9
1:      cmp     (%rdi), %rax
        jne     3f
2:      lea     (%rax,%r8), %rdx
        cmp     LAST_WORD(%rdi), %rdx
        jne     4f
5:      add     %r9, %rax
        add     $PAGE, %rdi
        cmp     %rsi, %rdi
        jb      1b
9:      ret
3:      mov     %rax, %rdx
        mov     %rdi, %rcx
        mov     (%rdi), %r10
        lea     area_read(%rip), %r11
        call    record_bad
        jmp     2b
4:      lea     LAST_WORD(%rdi), %rcx
        mov     LAST_WORD(%rdi), %r10
        lea     area_read(%rip), %r11
        call    record_bad
        jmp     5b

/*
 * WRITE area, tick n (= tick + 1): word 0 must still hold pattern_w(gpa, n-1)
 * from the previous tick, then becomes pattern_w(gpa, n).  This proves pages
 * the guest dirtied before a snapshot come back with the dirtied contents.
 * A bad word is overwritten with the right new value, so a WRITE error is
 * reported once; a READ error is reported on every tick.
 */
verify_and_write:
        mov     write_base(%rip), %rdi
        mov     write_end(%rip), %rsi
        cmp     %rsi, %rdi
        jae     9f
        mov     %rdi, %rax
        mov     $K, %r9
        imul    %r9, %rax
        mov     $WRITE_SEED, %rdx
        add     %rdx, %rax
        add     tick(%rip), %rax        /* pattern_w(write_base, n-1) */
        imul    $PAGE, %r9, %r9
1:      cmp     (%rdi), %rax
        jne     3f
2:      lea     1(%rax), %rdx
        mov     %rdx, (%rdi)
        add     %r9, %rax
        add     $PAGE, %rdi
        cmp     %rsi, %rdi
        jb      1b
9:      ret
3:      mov     %rax, %rdx
        mov     %rdi, %rcx
        mov     (%rdi), %r10
        lea     area_write(%rip), %r11
        call    record_bad
        jmp     2b

/* rcx = gpa, r10 = got, rdx = want, r11 = area name.  Keeps the first only; preserves rax. */
record_bad:
        incq    bad_count(%rip)
        cmpq    $1, bad_count(%rip)
        jne     1f
        mov     %rcx, bad_addr(%rip)
        mov     %r10, bad_got(%rip)
        mov     %rdx, bad_want(%rip)
        mov     %r11, bad_area(%rip)
1:      ret

/*
 * Sleep until tick_tsc TSC ticks have passed since the tick started (r12).
 * The unsigned difference makes a TSC that jumps backwards (odd restores)
 * end the wait instead of hanging; a jump forward just ends it early.
 */
wait_tick:
        mov     tick_tsc(%rip), %r8
        test    %r8, %r8
        jz      3f
1:      rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        sub     %r12, %rax
        cmp     %r8, %rax
        jae     3f
        cmpq    $0, timer_ok(%rip)
        je      2f
        sti                             /* sti's shadow makes sti;hlt race-free */
        hlt
        cli
        jmp     1b
2:      pause
        jmp     1b
3:      ret

/* ------------------------------------------------------------------------ */
/* Console lines (formats documented in README.md)                          */

print_ready:
        lea     msg_ready(%rip), %rdi
        call    puts
        mov     mem_total(%rip), %rax
        add     $0xfffff, %rax
        shr     $20, %rax
        call    put_dec
        lea     msg_read(%rip), %rdi
        call    puts
        mov     read_end(%rip), %rax
        sub     read_base(%rip), %rax
        shr     $12, %rax
        call    put_dec
        lea     msg_write(%rip), %rdi
        call    puts
        mov     write_end(%rip), %rax
        sub     write_base(%rip), %rax
        shr     $12, %rax
        call    put_dec
        lea     msg_read_base(%rip), %rdi
        call    puts
        mov     read_base(%rip), %rax
        call    put_hex
        lea     msg_write_base(%rip), %rdi
        call    puts
        mov     write_base(%rip), %rax
        call    put_hex
        lea     msg_tick_ms(%rip), %rdi
        call    puts
        mov     tick_ms(%rip), %rax
        call    put_dec
        lea     msg_tsc_khz(%rip), %rdi
        call    puts
        mov     tsc_per_ms(%rip), %rax
        call    put_dec
        lea     msg_clock(%rip), %rdi
        call    puts
        mov     clock_name(%rip), %rdi
        call    puts
        lea     msg_timer(%rip), %rdi
        call    puts
        mov     timer_name(%rip), %rdi
        call    puts
        jmp     put_crlf

/* r13 = work time in us. */
print_tick:
        lea     msg_tick(%rip), %rdi
        call    puts
        mov     tick(%rip), %rax
        call    put_dec
        cmpq    $0, bad_count(%rip)
        jne     1f
        lea     msg_ok(%rip), %rdi
        call    puts
        jmp     2f
1:      lea     msg_bad(%rip), %rdi
        call    puts
        mov     bad_area(%rip), %rdi
        call    puts
        lea     msg_addr(%rip), %rdi
        call    puts
        mov     bad_addr(%rip), %rax
        call    put_hex
        lea     msg_got(%rip), %rdi
        call    puts
        mov     bad_got(%rip), %rax
        call    put_hex
        lea     msg_want(%rip), %rdi
        call    puts
        mov     bad_want(%rip), %rax
        call    put_hex
        lea     msg_count(%rip), %rdi
        call    puts
        mov     bad_count(%rip), %rax
        call    put_dec
2:      lea     msg_us(%rip), %rdi
        call    puts
        mov     %r13, %rax
        call    put_dec
        jmp     put_crlf

/* Fatal errors: one line, then stop for good (interrupts off, hlt). */
err_no_bootparams:
        lea     msg_err_bp(%rip), %rdi
        jmp     die_msg
err_no_ram:
        lea     msg_err_ram(%rip), %rdi
        jmp     die_msg
err_bad_option:
        lea     msg_err_opt(%rip), %rdi
        call    puts
1:      movzbl  (%rbx), %eax            /* rbx = start of the offending token */
        cmp     $' ', %al
        jbe     die
        call    putc
        inc     %rbx
        jmp     1b
err_no_fit:
        lea     msg_err_fit(%rip), %rdi
        call    puts
        mov     write_end(%rip), %rax
        call    put_hex
        lea     msg_err_fit2(%rip), %rdi
        call    puts
        mov     usable_end(%rip), %rax
        call    put_hex
        jmp     die
die_msg:
        call    puts
die:
        call    put_crlf
        cli
1:      hlt
        jmp     1b

/* al = character.  Bounded wait on LSR.THRE so a missing UART cannot hang us. */
putc:
        push    %rax
        push    %rcx
        push    %rdx
        mov     %eax, %ecx              /* keep the character in cl */
        push    %rcx
        mov     $COM1_LSR, %dx
        mov     $10000, %ecx
1:      in      %dx, %al
        test    $LSR_THRE, %al
        jnz     2f
        pause
        dec     %ecx
        jnz     1b
2:      pop     %rax
        mov     $COM1_THR, %dx
        out     %al, %dx
        pop     %rdx
        pop     %rcx
        pop     %rax
        ret

/* rdi = NUL-terminated string. */
puts:
1:      movzbl  (%rdi), %eax
        test    %al, %al
        jz      2f
        call    putc
        inc     %rdi
        jmp     1b
2:      ret

put_crlf:
        mov     $'\r', %al
        call    putc
        mov     $'\n', %al
        jmp     putc

/* rax = value, printed in decimal. */
put_dec:
        lea     numbuf_end(%rip), %rdi
        movb    $0, (%rdi)
        mov     $10, %ecx
1:      xor     %edx, %edx
        div     %rcx
        add     $'0', %dl
        dec     %rdi
        mov     %dl, (%rdi)
        test    %rax, %rax
        jnz     1b
        jmp     puts

/* rax = value, printed as 0x + 16 lowercase hex digits. */
put_hex:
        push    %rbx
        mov     %rax, %rbx
        mov     $'0', %al
        call    putc
        mov     $'x', %al
        call    putc
        mov     $16, %ecx
1:      rol     $4, %rbx
        mov     %ebx, %eax
        and     $15, %eax
        lea     hex_digits(%rip), %rdx
        movzbl  (%rdx,%rax), %eax
        push    %rcx
        call    putc
        pop     %rcx
        dec     %ecx
        jnz     1b
        pop     %rbx
        ret

/* ------------------------------------------------------------------------ */
/* Interrupts and exceptions                                                */

/*
 * Build a 256-entry IDT at run time (gate descriptors split the handler
 * address into fields a static link cannot express).  Vectors 0-31 go to
 * per-vector stubs that report the fault; everything else (the timer,
 * spurious or stray interrupts) just acknowledges and returns.
 */
idt_init:
        lea     idt(%rip), %rdi
        xor     %ecx, %ecx
1:      lea     irq_entry(%rip), %rax
        cmp     $32, %ecx
        jae     2f
        mov     %ecx, %eax
        shl     $4, %eax
        lea     exc_stubs(%rip), %rdx
        add     %rdx, %rax
2:      mov     %eax, %edx
        and     $0xffff, %edx
        or      $(KERNEL_CS << 16), %edx
        mov     %edx, (%rdi)
        mov     %eax, %edx
        and     $0xffff0000, %edx
        or      $0x8e00, %edx           /* present, DPL 0, 64-bit interrupt gate */
        mov     %edx, 4(%rdi)
        shr     $32, %rax
        mov     %eax, 8(%rdi)
        movl    $0, 12(%rdi)
        add     $16, %rdi
        inc     %ecx
        cmp     $256, %ecx
        jb      1b
        ret

irq_entry:
        push    %rax
        push    %rcx
        push    %rdx
        cmpq    $0, timer_ok(%rip)
        je      1f
        mov     $X2APIC_EOI, %ecx
        xor     %eax, %eax
        xor     %edx, %edx
        wrmsr
1:      pop     %rdx
        pop     %rcx
        pop     %rax
        iretq

        /* One 16-byte stub per exception vector; the CPU pushes an error code only for some. */
        .balign 16
exc_stubs:
        .set vec, 0
        .rept 32
        .balign 16
        .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        .else
        pushq   $0
        .endif
        pushq   $vec
        jmp     fault_common
        .set vec, vec + 1
        .endr

/* Stack: vector, error code, rip, cs, rflags, rsp, ss.  Report and stop. */
fault_common:
        lea     msg_fault(%rip), %rdi
        call    puts
        mov     (%rsp), %rax
        call    put_dec
        lea     msg_err(%rip), %rdi
        call    puts
        mov     8(%rsp), %rax
        call    put_hex
        lea     msg_rip(%rip), %rdi
        call    puts
        mov     16(%rsp), %rax
        call    put_hex
        lea     msg_cr2(%rip), %rdi
        call    puts
        mov     %cr2, %rax
        call    put_hex
        jmp     die

/* ------------------------------------------------------------------------ */
        .section .rodata
        .balign 8
gdt:
        .quad   0                       /* null */
        .quad   0x00af9b000000ffff      /* 0x08: 64-bit code, DPL 0 */
        .quad   0x00cf93000000ffff      /* 0x10: data */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .quad   gdt
idt_desc:
        .word   256 * 16 - 1
        .quad   idt

        /* Options: prefix, variable (8-byte value). */
opt_table:
        .quad   opt_read, read_mib
        .quad   opt_write, write_mib
        .quad   opt_tick, tick_ms
        .quad   0, 0
opt_prefix:     .asciz "fcvm."
opt_read:       .asciz "fcvm.read_mib="
opt_write:      .asciz "fcvm.write_mib="
opt_tick:       .asciz "fcvm.tick_ms="

hex_digits:     .ascii "0123456789abcdef"
msg_boot:       .asciz "FCVM-GUEST BOOT\r\n"
msg_ready:      .asciz "FCVM-GUEST READY mem="
msg_read:       .asciz " read="
msg_write:      .asciz " write="
msg_read_base:  .asciz " read_base="
msg_write_base: .asciz " write_base="
msg_tick_ms:    .asciz " tick_ms="
msg_tsc_khz:    .asciz " tsc_khz="
msg_clock:      .asciz " clock="
msg_timer:      .asciz " timer="
msg_tick:       .asciz "FCVM-GUEST TICK "
msg_ok:         .asciz " OK"
msg_bad:        .asciz " BAD area="
msg_addr:       .asciz " addr="
msg_got:        .asciz " got="
msg_want:       .asciz " want="
msg_count:      .asciz " count="
msg_us:         .asciz " us="
msg_fault:      .asciz "FCVM-GUEST FAULT vec="
msg_err:        .asciz " err="
msg_rip:        .asciz " rip="
msg_cr2:        .asciz " cr2="
msg_err_bp:     .asciz "FCVM-GUEST ERROR no Linux boot_params at rsi"
msg_err_ram:    .asciz "FCVM-GUEST ERROR no RAM at 16 MiB in the e820 map"
msg_err_opt:    .asciz "FCVM-GUEST ERROR bad option "
msg_err_fit:    .asciz "FCVM-GUEST ERROR areas do not fit: end="
msg_err_fit2:   .asciz " usable_end="
area_read:      .asciz "read"
area_write:     .asciz "write"
clk_kvmclock:   .asciz "kvmclock"
clk_cpuid:      .asciz "cpuid"
clk_guess:      .asciz "guess"
tmr_x2apic:     .asciz "x2apic"
tmr_spin:       .asciz "spin"

/* ------------------------------------------------------------------------ */
        /* Initialised explicitly: the loader copies only file contents. */
        .section .data
        .balign 8
boot_params:    .quad 0
read_mib:       .quad DEF_READ_MIB
write_mib:      .quad DEF_WRITE_MIB
tick_ms:        .quad DEF_TICK_MS
tick:           .quad 0
timer_ok:       .quad 0
timer_name:     .quad tmr_spin
clock_name:     .quad clk_guess
tsc_per_ms:     .quad FALLBACK_TSC_KHZ
tick_tsc:       .quad 0
mem_total:      .quad 0
usable_end:     .quad 0
read_base:      .quad 0
read_end:       .quad 0
write_base:     .quad 0
write_end:      .quad 0
bad_count:      .quad 0
bad_addr:       .quad 0
bad_got:        .quad 0
bad_want:       .quad 0
bad_area:       .quad 0
numbuf:         .fill 24, 1, 0
numbuf_end:     .byte 0

        .section .bss
        .balign 4096
idt:            .fill 256 * 16, 1, 0
pvclock:        .fill 4096, 1, 0        /* pvclock_vcpu_time_info (32 bytes), alone in its page */
stack:          .fill 16384, 1, 0
stack_top:

        .section .note.GNU-stack, "", @progbits
