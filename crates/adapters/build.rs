//! `sqlx::migrate!` embeds the migrations at compile time; without this a
//! changed or added migration would not trigger a rebuild on stable Rust.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
