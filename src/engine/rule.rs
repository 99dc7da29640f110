//! The rules by name (docs/design.md §6 State and rules); the list itself is
//! [`crate::engine::rules::registry!`].

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
super::rules::registry!(declare_rule);

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
