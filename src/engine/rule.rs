//! The five rules by name (docs/design.md §6 State and rules).

/// A rule that can emit alerts.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Rule {
    /// Inactivity → win-back sequence.
    Winback = 0,
    /// Purchases well below the customer's own baseline.
    FrequencyDrop = 1,
    /// Complaint, low score or ticket over SLA → apology.
    SupportRecovery = 2,
    /// Milestones, loyal promotion, anniversary → thanks.
    ThankYou = 3,
    /// A lapsed or recently won-back customer buys again.
    WelcomeBack = 4,
}

impl Rule {
    /// Number of rules.
    pub const COUNT: usize = 5;
    /// All rules in a fixed order.
    pub const ALL: [Rule; Rule::COUNT] = [
        Rule::Winback,
        Rule::FrequencyDrop,
        Rule::SupportRecovery,
        Rule::ThankYou,
        Rule::WelcomeBack,
    ];

    /// The rule's name in config and alerts.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Winback => "winback",
            Rule::FrequencyDrop => "frequency_drop",
            Rule::SupportRecovery => "support_recovery",
            Rule::ThankYou => "thank_you",
            Rule::WelcomeBack => "welcome_back",
        }
    }

    /// Looks a rule up by its config name.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Index into per-rule arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}
