//! Customer stages (docs/design.md §6 State and rules) and the recorded cause of the latest stage change.

/// Where a customer stands in their life cycle.
#[derive(
    Copy,
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Stage {
    /// Known (profile or support contact), never purchased.
    #[default]
    Prospect = 0,
    /// Exactly one purchase.
    New = 1,
    /// Buying regularly.
    Active = 2,
    /// Promoted for many purchases over a long tenure.
    Loyal = 3,
    /// churn_risk crossed the at-risk line, or purchases dropped.
    AtRisk = 4,
    /// Inactive past the win-back threshold.
    Lapsed = 5,
    /// A lapsed customer bought again.
    WonBack = 6,
}

impl Stage {
    /// All stages in order.
    pub const ALL: [Stage; 7] = [
        Stage::Prospect,
        Stage::New,
        Stage::Active,
        Stage::Loyal,
        Stage::AtRisk,
        Stage::Lapsed,
        Stage::WonBack,
    ];

    /// The stage's name in alerts and exports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prospect => "prospect",
            Stage::New => "new",
            Stage::Active => "active",
            Stage::Loyal => "loyal",
            Stage::AtRisk => "at_risk",
            Stage::Lapsed => "lapsed",
            Stage::WonBack => "won_back",
        }
    }

    /// A stage in which the customer is considered to be buying.
    pub fn is_buying(self) -> bool {
        matches!(
            self,
            Stage::New | Stage::Active | Stage::Loyal | Stage::WonBack
        )
    }
}

/// Why the customer is in their current stage (the rule and numbers are in the export).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Cause {
    /// First seen without a purchase.
    #[default]
    FirstContact = 0,
    /// A purchase moved them (count in `purchases`).
    Purchase = 1,
    /// Reached the loyal criteria (`thank_you` / `loyal`).
    LoyalPromotion = 2,
    /// churn_risk crossed `risk.at_risk`.
    RiskCrossed = 3,
    /// `frequency_drop` fired.
    FrequencyDrop = 4,
    /// No purchase past the win-back threshold (`winback`).
    Inactivity = 5,
    /// Bought again while lapsed (`welcome_back`).
    Returned = 6,
}

impl Cause {
    /// A short explanation for exports and `inspect`.
    pub fn explain(self) -> &'static str {
        match self {
            Cause::FirstContact => "first contact without a purchase",
            Cause::Purchase => "purchase count",
            Cause::LoyalPromotion => "loyal criteria met (min_purchases over min_tenure)",
            Cause::RiskCrossed => "churn_risk crossed risk.at_risk",
            Cause::FrequencyDrop => "frequency_drop fired",
            Cause::Inactivity => "no purchase past the win-back threshold",
            Cause::Returned => "purchase while lapsed",
        }
    }
}
