//! The device code maps, as data: IEEE 11073-10101 (MDC) observation codes to LOINC, with
//! the category and R4 vital-signs profile each belongs to, blood-pressure panels and
//! their members, MDC units to UCUM, and MDC device types. Loaded once from
//! `fhir-profiles/devices/mdc.json`; a mapping fix is a data change.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

const MDC_JSON: &str = include_str!("../../fhir-profiles/devices/mdc.json");

/// The FHIR system of MDC codes.
pub const MDC_SYSTEM: &str = "urn:iso:std:iso:11073:10101";
pub const LOINC_SYSTEM: &str = "http://loinc.org";
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";

#[derive(Debug, Deserialize)]
pub struct CodeMaps {
    pub system: String,
    pub observations: HashMap<String, ObservationCode>,
    pub panels: HashMap<String, Panel>,
    pub units: HashMap<String, UnitCode>,
    #[serde(default)]
    pub devices: HashMap<String, DeviceCode>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Loinc {
    pub code: String,
    pub display: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObservationCode {
    pub reference: String,
    pub display: String,
    #[serde(default)]
    pub loinc: Vec<Loinc>,
    pub category: Option<String>,
    pub profile: Option<String>,
    /// UCUM units the profile accepts (empty: any).
    #[serde(default)]
    pub units: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Panel {
    pub reference: String,
    pub display: String,
    #[serde(default)]
    pub loinc: Vec<Loinc>,
    pub category: Option<String>,
    pub profile: Option<String>,
    pub components: HashMap<String, PanelMember>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PanelMember {
    pub reference: String,
    pub display: String,
    #[serde(default)]
    pub loinc: Vec<Loinc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnitCode {
    pub reference: String,
    pub ucum: String,
    pub display: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceCode {
    pub reference: String,
    pub display: String,
    pub level: Option<String>,
}

impl CodeMaps {
    pub fn get() -> &'static CodeMaps {
        static MAPS: OnceLock<CodeMaps> = OnceLock::new();
        MAPS.get_or_init(|| {
            serde_json::from_str(MDC_JSON).expect("fhir-profiles/devices/mdc.json is valid")
        })
    }

    pub fn observation(&self, code: &str) -> Option<&ObservationCode> {
        self.observations.get(code)
    }

    pub fn unit(&self, code: &str) -> Option<&UnitCode> {
        self.units.get(code)
    }

    pub fn device(&self, code: &str) -> Option<&DeviceCode> {
        self.devices.get(code)
    }

    pub fn panel(&self, code: &str) -> Option<&Panel> {
        self.panels.get(code)
    }

    /// The panel a member code belongs to (`150021` → `150020`), with the member.
    pub fn panel_of(&self, member: &str) -> Option<(&str, &Panel, &PanelMember)> {
        self.panels.iter().find_map(|(code, panel)| {
            panel
                .components
                .get(member)
                .map(|m| (code.as_str(), panel, m))
        })
    }

    /// The UCUM code of an MDC unit given as a code or as its reference id.
    pub fn ucum(&self, code_or_reference: &str) -> Option<&UnitCode> {
        self.units.get(code_or_reference).or_else(|| {
            self.units
                .values()
                .find(|u| u.reference == code_or_reference)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vital_signs_map_to_loinc_and_ucum() {
        let maps = CodeMaps::get();
        assert_eq!(maps.system, MDC_SYSTEM);
        let heart_rate = maps.observation("147842").unwrap();
        assert_eq!(heart_rate.loinc[0].code, "8867-4");
        assert_eq!(heart_rate.category.as_deref(), Some("vital-signs"));
        assert_eq!(maps.observation("150456").unwrap().loinc[0].code, "2708-6");
        assert_eq!(maps.observation("151562").unwrap().loinc[0].code, "9279-1");
        assert_eq!(maps.observation("150364").unwrap().loinc[0].code, "8310-5");
        assert_eq!(maps.observation("188736").unwrap().loinc[0].code, "29463-7");
        let (panel_code, panel, systolic) = maps.panel_of("150021").unwrap();
        assert_eq!(panel_code, "150020");
        assert_eq!(panel.loinc[0].code, "85354-9");
        assert_eq!(systolic.loinc[0].code, "8480-6");
        assert_eq!(maps.panel_of("150302").unwrap().2.loinc[0].code, "8462-4");
        assert_eq!(maps.unit("264864").unwrap().ucum, "/min");
        assert_eq!(maps.unit("262688").unwrap().ucum, "%");
        assert_eq!(maps.unit("268192").unwrap().ucum, "Cel");
        assert_eq!(maps.unit("266016").unwrap().ucum, "mm[Hg]");
        assert_eq!(maps.ucum("MDC_DIM_KILO_G").unwrap().ucum, "kg");
    }

    #[test]
    fn every_vital_sign_profile_unit_is_ucum_of_some_mdc_unit() {
        let maps = CodeMaps::get();
        let ucum: Vec<&str> = maps.units.values().map(|u| u.ucum.as_str()).collect();
        for (code, observation) in &maps.observations {
            for unit in &observation.units {
                assert!(
                    ucum.contains(&unit.as_str())
                        || ["[in_i]", "[lb_av]", "m2"].contains(&unit.as_str()),
                    "{code}: {unit} is no MDC unit's UCUM code"
                );
            }
        }
    }
}
