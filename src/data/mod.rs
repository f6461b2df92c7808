//! Reading the corpus: which files hold the text and how its stories are laid out.

pub mod corpus;
