//! Singapay's codes, what they mean, and the state machine that decides whether a
//! delivery changes a transaction.

/// What a transaction key is about; the key is `{product}:{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    Va,
    Qris,
    PaymentLink,
    Ewallet,
    Disbursement,
    EwalletTopup,
    QrisIssuer,
    Settlement,
    SettlementRefund,
    SubscriptionBill,
    SubscriptionPlan,
    DirectDebit,
}

impl Product {
    pub const ALL: [Product; 12] = [
        Product::Va,
        Product::Qris,
        Product::PaymentLink,
        Product::Ewallet,
        Product::Disbursement,
        Product::EwalletTopup,
        Product::QrisIssuer,
        Product::Settlement,
        Product::SettlementRefund,
        Product::SubscriptionBill,
        Product::SubscriptionPlan,
        Product::DirectDebit,
    ];

    /// The product a stored name (`transactions.product`) or a transaction key's prefix
    /// (`disbursement:…`) names.
    pub fn from_name(name: &str) -> Option<Product> {
        let name = name.split_once(':').map_or(name, |(p, _)| p);
        Product::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Money leaving the merchant's account: its state is a `transaction_status.code`.
    pub fn is_money_out(self) -> bool {
        matches!(self, Product::Disbursement | Product::EwalletTopup | Product::QrisIssuer)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Va => "va",
            Product::Qris => "qris",
            Product::PaymentLink => "payment_link",
            Product::Ewallet => "ewallet",
            Product::Disbursement => "disbursement",
            Product::EwalletTopup => "ewallet_topup",
            Product::QrisIssuer => "qris_issuer",
            Product::Settlement => "settlement",
            Product::SettlementRefund => "settlement_refund",
            Product::SubscriptionBill => "subscription_bill",
            Product::SubscriptionPlan => "subscription_plan",
            Product::DirectDebit => "direct_debit",
        }
    }

    /// Products whose status is a payment status (the normalised vocabulary).
    pub fn is_payment(self) -> bool {
        matches!(
            self,
            Product::Va
                | Product::Qris
                | Product::PaymentLink
                | Product::Ewallet
                | Product::Disbursement
                | Product::EwalletTopup
                | Product::QrisIssuer
                | Product::SubscriptionBill
        )
    }
}

/// Money-out `transaction_status.code` → normalised status.
pub fn status_from_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "00" => "succeeded",
        "01" => "initiated",
        "02" => "paying",
        "03" => "pending",
        "04" => "refunded",
        "05" => "canceled",
        "06" => "failed",
        "07" => "not_found",
        _ => return None,
    })
}

/// Money-in status strings (`paid`, `unpaid`, …) → normalised status.
pub fn status_from_money_in(s: &str) -> Option<&'static str> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "paid" | "success" | "succeeded" | "settled" | "completed" => "succeeded",
        // `open`: a QRIS code, payment link or e-wallet checkout not paid yet (inquiries).
        "pending" | "unpaid" | "open" | "pending_otp" => "pending",
        "initiated" => "initiated",
        "paying" => "paying",
        "expired" => "expired",
        "failed" | "failure" => "failed",
        "refunded" => "refunded",
        "canceled" | "cancelled" => "canceled",
        "not_found" => "not_found",
        _ => return None,
    })
}

/// A non-payment product's own status, lower-cased (`ACTIVE` → `active`).
pub fn own_status(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= 64).then(|| s.to_ascii_lowercase())
}

/// Rank in the state machine: 1 initiated < 2 paying < 3 pending < 4 terminal. `None` for
/// statuses with no known order, which replace each other in arrival order.
pub fn rank(product: Product, status: &str) -> Option<u8> {
    match product {
        // A failed subscription charge is retried and may still succeed: not terminal.
        Product::SubscriptionBill if status == "failed" => Some(3),
        Product::SubscriptionPlan => match status {
            "pending_card_linking" => Some(1),
            "pending_payment" => Some(2),
            "active" | "paused" | "suspended" => Some(3),
            "cancelled" | "canceled" | "completed" => Some(4),
            _ => None,
        },
        Product::DirectDebit => match status {
            "pending_auth" => Some(1),
            "active" => Some(2),
            _ => None,
        },
        Product::Settlement => (status == "completed").then_some(4),
        Product::SettlementRefund => None,
        _ => match status {
            "initiated" => Some(1),
            "paying" => Some(2),
            "pending" | "unpaid" => Some(3),
            "succeeded" | "failed" | "refunded" | "canceled" | "expired" | "not_found" => Some(4),
            _ => None,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Applied,
    Unchanged,
    Stale,
    Conflict,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Applied => "applied",
            Transition::Unchanged => "unchanged",
            Transition::Stale => "stale",
            Transition::Conflict => "conflict",
        }
    }
}

/// DESIGN §5: a delivery changes a transaction when it is new, ranks higher, or refunds a
/// success; the same status is `unchanged`, a lower one `stale`, terminal → other terminal
/// a `conflict`.
pub fn decide(product: Product, current: Option<&str>, new: &str) -> Transition {
    let Some(current) = current else {
        return Transition::Applied;
    };
    if current == new {
        return Transition::Unchanged;
    }
    if current == "succeeded" && new == "refunded" {
        return Transition::Applied;
    }
    match (rank(product, current), rank(product, new)) {
        (Some(cur), Some(next)) if next > cur => Transition::Applied,
        (Some(cur), Some(next)) if next < cur => Transition::Stale,
        (Some(4), Some(4)) => Transition::Conflict,
        // Same non-terminal rank (e.g. a plan going active → paused), or an unranked status.
        _ => Transition::Applied,
    }
}

/// Coarse meaning of a request-level `response_code`: it describes the request, never the
/// payment.
pub fn response_class(code: &str) -> &'static str {
    match code {
        "SP000" => "success",
        "SP001" => "failed",
        "SP002" => "unknown",
        "SP005" => "pending",
        "SP003" | "SP004" | "SP006" | "SP007" | "SP008" | "SP009" | "SP010" | "SP011" | "SP012" | "SP013" | "SP014"
        | "SP015" | "SP016" | "SP017" | "SP018" | "SP019" | "SP020" | "SP403" => "rejected",
        // The older two-digit table (seed documents).
        "00" | "51" => "success",
        "01" => "pending",
        "02" | "50" => "failed",
        "03" | "05" | "14" | "15" | "89" | "99" => "unknown",
        "04" | "06" | "07" | "08" | "09" | "10" | "11" | "12" | "13" | "16" | "17" | "20" | "21" | "22" => "rejected",
        _ => "unrecognised",
    }
}

/// Singapay's advice for these codes is "call inquiry-status, never assume".
pub fn needs_inquiry(code: &str) -> bool {
    matches!(code, "SP001" | "SP002" | "SP005")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_found_by_name_and_by_key() {
        for p in Product::ALL {
            assert_eq!(Product::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Product::from_name("disbursement:PAYOUT-1"), Some(Product::Disbursement));
        assert_eq!(Product::from_name("payment_link:a:b"), Some(Product::PaymentLink));
        assert_eq!(Product::from_name("nothing:1"), None);
    }

    #[test]
    fn money_out_codes_decide_the_state() {
        assert_eq!(status_from_code("01"), Some("initiated"));
        assert_eq!(status_from_code("06"), Some("failed"));
        assert_eq!(status_from_code("08"), None);
    }

    #[test]
    fn transitions_follow_the_rank_order() {
        let p = Product::Disbursement;
        assert_eq!(decide(p, None, "initiated"), Transition::Applied);
        assert_eq!(decide(p, Some("initiated"), "pending"), Transition::Applied);
        assert_eq!(decide(p, Some("pending"), "pending"), Transition::Unchanged);
        assert_eq!(decide(p, Some("succeeded"), "pending"), Transition::Stale);
        assert_eq!(decide(p, Some("succeeded"), "refunded"), Transition::Applied);
        assert_eq!(decide(p, Some("failed"), "succeeded"), Transition::Conflict);
        assert_eq!(decide(p, Some("refunded"), "succeeded"), Transition::Conflict);
    }

    #[test]
    fn a_failed_subscription_charge_can_still_succeed() {
        let p = Product::SubscriptionBill;
        assert_eq!(decide(p, Some("failed"), "succeeded"), Transition::Applied);
        assert_eq!(decide(p, Some("succeeded"), "failed"), Transition::Stale);
    }
}
