//! The rules by name (docs/design.md §6 State and rules), and the registry: the one
//! list of rules every per-rule table is built from.

/// The one list of rules: `Variant = index => module`. The index is the rule's place in
/// per-rule arrays and in stored state, so a rule keeps its number for good.
///
/// Called with a macro name, it hands that macro the list; the rule enum, the modules,
/// the rule settings, the `[rules]` section and the per-rule lookups are all built
/// from it.
macro_rules! registry {
    ($then:ident) => {
        $then! {
            Winback = 0 => winback,
            FrequencyDrop = 1 => frequency_drop,
            SupportRecovery = 2 => support_recovery,
            ThankYou = 3 => thank_you,
            WelcomeBack = 4 => welcome_back,
        }
    };
}
pub(crate) use registry;

macro_rules! declare_rule {
    ($($variant:ident = $index:literal => $module:ident,)*) => {
        /// A rule that can emit alerts.
        #[derive(
            Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        pub enum Rule {
            $(
                #[doc = concat!("`", stringify!($module), "` (engine/rules/", stringify!($module), ".rs).")]
                $variant = $index,
            )*
        }

        impl Rule {
            /// Number of rules.
            pub const COUNT: usize = [$(Rule::$variant),*].len();
            /// All rules in a fixed order.
            pub const ALL: [Rule; Rule::COUNT] = [$(Rule::$variant),*];

            /// The rule's name in config and alerts.
            pub fn name(self) -> &'static str {
                match self {
                    $(Rule::$variant => stringify!($module),)*
                }
            }
        }
    };
}
registry!(declare_rule);

impl Rule {
    /// Looks a rule up by its config name.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Index into per-rule arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}
