mod compiler;
mod policy;

fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stagewall"));
    println!("{}", obj.len());
}
