use serde::Deserialize;
use singapay_webhooks::singapay::signature::Credential;

#[derive(Debug, Clone, Deserialize)]
pub struct Vector {
    pub name: String,
    pub secret: String,
    pub access_token: String,
    pub endpoint: String,
    pub timestamp: String,
    pub raw_body: String,
    pub raw_signature: String,
    pub canonical_body: Option<String>,
    pub canonical_signature: Option<String>,
}

pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_vectors() -> Vec<Vector> {
    #[derive(Deserialize)]
    struct File {
        vectors: Vec<Vector>,
    }
    let text = std::fs::read_to_string(fixtures().join("vectors.json")).expect("vectors.json");
    serde_json::from_str::<File>(&text)
        .expect("vectors.json parses")
        .vectors
}

pub fn credential(label: &str, secret: &str) -> Credential {
    Credential {
        label: label.to_owned(),
        secret: secret.to_owned().into(),
    }
}
