// @rabbitmq-begin
//! An item, its validation, and its events.
// @rabbitmq-else
// //! An item and its validation.
// @rabbitmq-end

use chrono::{DateTime, Utc};
use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest accepted name, in characters.
pub const NAME_MAX: usize = 200;

/// Body of `POST /v1/items`: a JSON object (an array of the same values is refused).
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct NewItem {
    /// 1 to 200 characters, at least one of them visible (not only whitespace); no NUL.
    #[schema(min_length = 1, max_length = 200, example = "first item")]
    pub name: String,
    /// Free text; no NUL.
    #[schema(nullable = true)]
    pub note: Option<String>,
}

/// The fields of [`NewItem`], read from a map only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItemFields {
    name: String,
    note: Option<String>,
}

impl<'de> Deserialize<'de> for NewItem {
    /// Objects only, else 422: serde's derive would also read a sequence (`["name", null]`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = NewItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with `name` and an optional `note`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NewItem, A::Error> {
                let NewItemFields { name, note } =
                    NewItemFields::deserialize(MapAccessDeserializer::new(map))?;
                Ok(NewItem { name, note })
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

/// A [`NewItem`] that passed [`NewItem::parse`]: the only kind the database takes.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ValidNewItem(NewItem);

impl std::ops::Deref for ValidNewItem {
    type Target = NewItem;
    fn deref(&self) -> &NewItem {
        &self.0
    }
}

impl NewItem {
    /// The item, once it keeps the rules its type cannot express; else why not (a 422's detail).
    pub fn parse(self) -> Result<ValidNewItem, String> {
        let length = self.name.chars().count();
        if !(1..=NAME_MAX).contains(&length) {
            return Err(format!(
                "name: must be 1 to {NAME_MAX} characters, got {length}"
            ));
        }
        // An invisible name is a mistake: only spaces, controls, format characters (zero-width
        // spaces, BOMs, soft hyphens), baseless marks (variation selectors) or fillers.
        if !self.name.chars().any(is_visible) {
            return Err("name: must contain a visible character, not only whitespace".into());
        }
        // PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
        for (field, value) in [("name", Some(&self.name)), ("note", self.note.as_ref())] {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(format!("{field}: must not contain the NUL character"));
            }
        }
        Ok(ValidNewItem(self))
    }
}

fn is_visible(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    // Hangul and braille fillers: letters or symbols by category, but they draw nothing.
    !matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
    ) && !matches!(
        c.general_category(),
        G::SpaceSeparator
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::Control
            | G::Format
            | G::NonspacingMark
            | G::EnclosingMark
            | G::Unassigned
    )
}

/// A stored item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Item {
    pub id: Uuid,
    pub name: String,
    #[schema(nullable = true)]
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

// @rabbitmq-begin
/// The JSON body of an event message: `id` and `type`, which every event has, then the item's.
#[derive(Debug, Clone, Serialize)]
pub struct ItemEvent {
    /// The event's own id; also the AMQP `message_id`.
    pub id: Uuid,
    /// `item.created` or `item.deleted`: the routing key.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub item_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

impl ItemEvent {
    pub fn created(item_id: Uuid) -> Self {
        Self::new("item.created", item_id)
    }

    pub fn deleted(item_id: Uuid) -> Self {
        Self::new("item.deleted", item_id)
    }

    fn new(kind: &'static str, item_id: Uuid) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            item_id,
            occurred_at: Utc::now(),
        }
    }
}
// @rabbitmq-end

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> NewItem {
        NewItem {
            name: name.to_owned(),
            note: None,
        }
    }

    #[test]
    fn names_are_counted_in_characters() {
        assert!(named("").parse().is_err());
        assert!(named(&"é".repeat(200)).parse().is_ok());
        assert!(named(&"a".repeat(201)).parse().is_err());
    }

    #[test]
    fn a_name_needs_a_character_a_person_can_see() {
        for invisible in [
            " \t",
            "\u{200B}",
            "\u{FEFF}\u{200D}",
            "\u{00AD}\u{2060}",
            "\u{3000}",
            "\u{3164}\u{115F}\u{1160}\u{FFA0}",
            "\u{2800}",
            "\u{FE0F}\u{034F}\u{0301}",
        ] {
            assert!(named(invisible).parse().is_err(), "{invisible:?}");
        }
        for visible in ["a", "\u{200B}a", "日本", "🦀", "e\u{0301}", "\u{E000}"] {
            assert!(named(visible).parse().is_ok(), "{visible:?}");
        }
    }
}
