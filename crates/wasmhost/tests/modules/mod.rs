//! Small misbehaving proxy-wasm modules, built with `wasm-encoder`: shared by the host's
//! limits tests and `rollgate try`'s (`crates/rollgate/tests/limits.rs`).

use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, MemorySection,
    MemoryType, Module, TypeSection, ValType,
};

/// A minimal proxy-wasm module (ABI marker, memory, allocator, `on_vm_start` and
/// `on_configure` answering true) whose `proxy_on_request_headers` runs `body`.
fn module(body: &[Instruction<'_>]) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]); // 0: malloc
    types.ty().function([], []); // 1: ABI marker
    types
        .ty()
        .function([ValType::I32, ValType::I32, ValType::I32], [ValType::I32]); // 2: on_request_headers
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 3: on_vm_start, on_configure
    let mut funcs = FunctionSection::new();
    for ty in [0, 1, 2, 3, 3] {
        funcs.function(ty);
    }
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    for (i, name) in [
        "malloc",
        "proxy_abi_version_0_2_1",
        "proxy_on_request_headers",
        "proxy_on_vm_start",
        "proxy_on_configure",
    ]
    .iter()
    .enumerate()
    {
        exports.export(name, ExportKind::Func, i as u32);
    }
    let mut code = CodeSection::new();
    let bodies: [&[Instruction<'_>]; 5] = [
        &[Instruction::I32Const(1024), Instruction::End],
        &[Instruction::End],
        body,
        &[Instruction::I32Const(1), Instruction::End],
        &[Instruction::I32Const(1), Instruction::End],
    ];
    for b in bodies {
        let mut f = Function::new([]);
        for i in b {
            f.instruction(i);
        }
        code.function(&f);
    }
    let mut m = Module::new();
    m.section(&types)
        .section(&funcs)
        .section(&memory)
        .section(&exports)
        .section(&code);
    m.finish()
}

/// `loop { br 0 }`: never returns.
pub fn spin() -> Vec<u8> {
    use wasm_encoder::BlockType;
    module(&[
        Instruction::Loop(BlockType::Empty),
        Instruction::Br(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ])
}

/// Grows memory by 16 MiB at a time, forever (each grow fails once at 4 GiB).
pub fn hog() -> Vec<u8> {
    use wasm_encoder::BlockType;
    module(&[
        Instruction::Loop(BlockType::Empty),
        Instruction::I32Const(256),
        Instruction::MemoryGrow(0),
        Instruction::Drop,
        Instruction::Br(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ])
}
